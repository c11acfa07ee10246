// The Rpc transport over daxmapd's control connection (lib/protocol/control.ts).
import net from 'node:net';
import { daxError } from '../errors';
import { CONTROL_MAGIC, ControlReader, encodeFrame, restorePayload } from '../protocol/control';
import type { Notice, Response } from '../protocol/messages';
import { Rpc } from './rpc';
import type { Deadline } from '../deadline';

function socketRpc(sock: net.Socket): Rpc {
  const rpc = new Rpc();
  const reader = new ControlReader({ expectMagic: false });
  sock.on('data', (chunk: Buffer) => {
    let frames;
    try {
      frames = reader.push(chunk);
    } catch (err) {
      rpc.fail(daxError('EPROTO', `malformed reply from daxmapd: ${(err as Error).message}`));
      sock.destroy();
      return;
    }
    for (const f of frames) {
      const m = f.json as Response | Notice;
      rpc.receive('value' in m ? { ...m, value: restorePayload(m.value, f.payload) } : m);
    }
  });
  sock.on('close', () => rpc.fail(daxError('ECLOSED', 'the connection to daxmapd closed')));
  sock.on('error', () => {});
  rpc.attach({
    // A message too large for a frame throws here (EMSGSIZE) and is never sent.
    send: (req) => sock.write(encodeFrame({ ...req })),
    busy: () => sock.ref(),
    idle: () => sock.unref(),
    close: () => sock.end(),
    destroy: () => sock.destroy(),
  });
  return rpc;
}

/**
 * Connects within `dl` (its time limit and signal): a full listen backlog (EAGAIN)
 * is retried on a timer; ETIMEDOUT or an AbortError when `dl` runs out.
 */
export async function connectSocketRpc(path: string, dl: Deadline): Promise<Rpc> {
  for (let backoff = 1; ; backoff = Math.min(backoff * 2, 50)) {
    const sock = net.connect(path);
    sock.on('error', () => {});
    const r = await dl.race(new Promise<NodeJS.ErrnoException | null>((resolve) => {
      sock.once('connect', () => resolve(null));
      sock.once('error', (err: NodeJS.ErrnoException) => resolve(err));
    }), 'connection').catch((err: unknown) => {
      sock.destroy();
      throw err;
    });
    if (r === null) {
      sock.removeAllListeners('error');
      sock.write(CONTROL_MAGIC);
      return socketRpc(sock);
    }
    sock.destroy();
    if (r.code !== 'EAGAIN') {
      const code = r.code === 'ENOENT' || r.code === 'ECONNREFUSED' ? r.code : (r.code ?? 'EIO');
      throw daxError(code, `cannot connect to daxmapd at '${path}': ${r.message}. Is daxmapd running (npm start)?`);
    }
    await dl.sleep(backoff, 'connection (the listen backlog stayed full)');
  }
}
