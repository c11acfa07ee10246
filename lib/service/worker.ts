// Entry of the service worker thread (embedded mode). workerData is a
// StartRequest; the first message is the StartReply; then parentPort is the
// opening thread's connection.
import { parentPort, workerData } from 'node:worker_threads';
import { errorInfo } from '../protocol/errors';
import { configureLogger } from '../log';
import type { Service as ServiceType } from './service';
import type { StartReply, StartRequest } from '../protocol/messages';

async function main(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('the daxmap service must run in a worker thread');
  const req = workerData as StartRequest;
  // The logger first: the layers make their child loggers when they are loaded.
  if (req.logLevel !== undefined || req.logPort !== undefined) {
    const logPort = req.logPort;
    if (logPort) logPort.unref();
    configureLogger({
      ...(req.logLevel !== undefined ? { level: req.logLevel } : {}),
      ...(logPort ? { write: (line: string) => logPort.postMessage(line) } : {}),
    });
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Service } = require('./service') as typeof import('./service');
  let reply: StartReply;
  let service: ServiceType | undefined;
  try {
    service = await Service.start(req);
    reply = { ok: true, hello: service.hello() };
  } catch (err) {
    reply = { ok: false, error: errorInfo(err) };
  }
  port.postMessage(reply);
  if (service) service.connect(port as unknown as import('node:worker_threads').MessagePort);
  else port.close();
}

void main();
