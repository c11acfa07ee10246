// The control connection between a client process and daxmapd: the same requests,
// responses and notices as the in-process MessagePort (./messages.ts),
// framed on a UNIX stream socket. Fault traffic goes over a second connection in the
// binary wire format of docs/wire.md, handled natively on the client side.
//
// A control connection starts with the 4 bytes "DXC1"; then every frame is
//   u32 jsonLength, u32 payloadLength, JSON (UTF-8), payload bytes
// little-endian. The JSON is a request { id, op, args }, a response { id, ok, value }
// / { id, ok: false, error }, or a notice. At most one binary payload travels per
// frame: an argument or a value `{ "$bin": true }` stands for it.
import { daxError } from '../errors';
import { FrameReader } from '../util/frame-reader';

export const CONTROL_MAGIC = Buffer.from('DXC1', 'latin1');
export const FRAME_HEADER = 8;
export const MAX_JSON = 1 << 20;
export const MAX_PAYLOAD = 32 << 20;

const BIN = '$bin';

export interface Frame {
  json: unknown;
  payload: Buffer | null;
}

/** Encode a message; a Uint8Array anywhere among `args` / `value` becomes the payload. */
export function encodeFrame(msg: Record<string, unknown>): Buffer {
  let payload: Uint8Array | null = null;
  const take = (v: unknown): unknown => {
    if (v instanceof Uint8Array) {
      if (payload !== null) throw daxError('EINVAL', 'at most one binary payload per message');
      payload = v;
      return { [BIN]: true };
    }
    return v;
  };
  const out: Record<string, unknown> = { ...msg };
  if (Array.isArray(msg.args)) out.args = msg.args.map(take);
  if ('value' in msg) out.value = take(msg.value);
  const json = Buffer.from(JSON.stringify(out, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)), 'utf8');
  const p = payload as Uint8Array | null;
  const plen = p === null ? 0 : p.length;
  if (json.length > MAX_JSON || plen > MAX_PAYLOAD) throw daxError('EMSGSIZE', 'control message too large');
  const head = Buffer.alloc(FRAME_HEADER);
  head.writeUInt32LE(json.length, 0);
  head.writeUInt32LE(plen, 4);
  return p === null ? Buffer.concat([head, json]) : Buffer.concat([head, json, p]);
}

/**
 * Put the payload back where `{ "$bin": true }` stands. A frame without payload bytes
 * carries an empty one: a zero-length write, or a read at EOF.
 */
export function restorePayload(v: unknown, payload: Buffer | null): unknown {
  if (v !== null && typeof v === 'object' && (v as Record<string, unknown>)[BIN] === true) {
    return payload ?? Buffer.alloc(0);
  }
  return v;
}

/**
 * Reassembles frames from a control stream (lib/util/frame-reader.ts). Throws EPROTO
 * / EMSGSIZE on anything malformed; the connection must then be dropped.
 */
export class ControlReader {
  private readonly reader: FrameReader<Frame>;

  constructor(opts: { expectMagic: boolean }) {
    this.reader = new FrameReader<Frame>({
      name: 'control stream',
      headerSize: FRAME_HEADER,
      ...(opts.expectMagic ? { preamble: { bytes: CONTROL_MAGIC, mismatch: () => daxError('EPROTO', 'not a daxmap control connection') } } : {}),
      frameLength: (h) => {
        const jlen = h.readUInt32LE(0);
        const plen = h.readUInt32LE(4);
        if (jlen === 0 || jlen > MAX_JSON) throw daxError('EMSGSIZE', `control frame JSON of ${jlen} bytes`);
        if (plen > MAX_PAYLOAD) throw daxError('EMSGSIZE', `control frame payload of ${plen} bytes`);
        return FRAME_HEADER + jlen + plen;
      },
      decode: (frame) => {
        const jend = FRAME_HEADER + frame.readUInt32LE(0);
        let json: unknown;
        try {
          json = JSON.parse(frame.toString('utf8', FRAME_HEADER, jend));
        } catch {
          throw daxError('EPROTO', 'control frame is not JSON');
        }
        if (json === null || typeof json !== 'object' || Array.isArray(json)) throw daxError('EPROTO', 'control frame is not an object');
        // A copy: the payload outlives the chunk it came in (a write's data, a read's bytes).
        return { json, payload: frame.length > jend ? Buffer.from(frame.subarray(jend)) : null };
      },
    });
  }

  push(chunk: Buffer): Frame[] {
    return this.reader.push(chunk);
  }
}
