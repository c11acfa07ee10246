// Entry of the service worker thread (embedded mode). workerData is a
// StartRequest; the first message is the StartReply; then parentPort is the
// opening thread's connection.
import { parentPort, workerData } from 'node:worker_threads';
import { errorInfo } from '../protocol/errors';
import { Service } from './service';
import type { StartReply, StartRequest } from '../protocol/messages';

async function main(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('the daxmap service must run in a worker thread');
  let reply: StartReply;
  let service: Service | undefined;
  try {
    service = await Service.start(workerData as StartRequest);
    reply = { ok: true, hello: service.hello() };
  } catch (err) {
    reply = { ok: false, error: errorInfo(err) };
  }
  port.postMessage(reply);
  if (service) service.connect(port as unknown as import('node:worker_threads').MessagePort);
  else port.close();
}

void main();
