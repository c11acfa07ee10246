// Raw protocol helpers for the daemon's fuzz and permission tests: a control
// connection that sends frames byte for byte (lib/protocol/control.ts) and a fault
// connection that speaks the wire protocol of docs/wire.md by hand
// (lib/native/wire.ts), each recording what the daemon sent back and whether it hung
// up.
import net from 'node:net';
import { CONTROL_MAGIC, ControlReader } from '../../dist/protocol/control';
import { MessageReader, decodeAnswersBody, encodeHello, encodeMessage, Msg, type WireMessage } from '../../dist/native/wire';

export { CONTROL_MAGIC };

/** A seeded PRNG (mulberry32): the same seed, the same frames. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** [0, n) */
  int(n: number): number {
    return n <= 0 ? 0 : Math.floor((this.u32() / 2 ** 32) * n);
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** One control frame: u32 jsonLen, u32 payloadLen, JSON, payload. */
export function controlFrame(json: string | Buffer, payload?: Buffer | null, lens?: { json?: number; payload?: number }): Buffer {
  const j = typeof json === 'string' ? Buffer.from(json, 'utf8') : json;
  const p = payload ?? Buffer.alloc(0);
  const head = Buffer.alloc(8);
  head.writeUInt32LE(lens?.json ?? j.length, 0);
  head.writeUInt32LE(lens?.payload ?? p.length, 4);
  return Buffer.concat([head, j, p]);
}

export function request(id: number, op: string, args: unknown[] = [], payload?: Buffer): Buffer {
  return controlFrame(JSON.stringify({ id, op, args }), payload ?? null);
}

export interface Reply {
  id: number;
  ok: boolean;
  value?: unknown;
  error?: { code: string; message: string };
  notice?: string;
}

function connect(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    s.once('connect', () => {
      s.removeListener('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/**
 * A control connection whose bytes are ours to choose. `replies` fills with every
 * frame the daemon sends; `closed` resolves when the daemon hangs up (or we do).
 */
export class RawControl {
  readonly replies: Reply[] = [];
  /** Replies that did not parse as control frames (the daemon never sends those). */
  readonly garbage: string[] = [];
  readonly closed: Promise<void>;
  isClosed = false;
  private waiters: (() => void)[] = [];

  private constructor(readonly sock: net.Socket) {
    const reader = new ControlReader({ expectMagic: false });
    sock.on('data', (chunk: Buffer) => {
      try {
        for (const f of reader.push(chunk)) this.replies.push(f.json as Reply);
      } catch (err) {
        this.garbage.push((err as Error).message);
        sock.destroy();
      }
      this.wake();
    });
    sock.on('error', () => {});
    this.closed = new Promise((res) => sock.on('close', () => {
      this.isClosed = true;
      this.wake();
      res();
    }));
  }

  static async open(path: string, opts: { magic?: boolean } = {}): Promise<RawControl> {
    const c = new RawControl(await connect(path));
    if (opts.magic !== false) c.sock.write(CONTROL_MAGIC);
    return c;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  write(b: Buffer): void {
    if (!this.isClosed && !this.sock.destroyed) this.sock.write(b);
  }

  /** Wait until `pred` holds or the connection closed; false on timeout. */
  async until(pred: () => boolean, timeoutMs = 30000): Promise<boolean> {
    const t0 = Date.now();
    while (!pred() && !this.isClosed) {
      const left = timeoutMs - (Date.now() - t0);
      if (left <= 0) return false;
      await new Promise<void>((res) => {
        const timer = setTimeout(res, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          res();
        });
      });
    }
    return true;
  }

  /** The reply to request `id`, or null if the daemon hung up first (or did not answer in time). */
  async reply(id: number, timeoutMs = 30000): Promise<Reply | null> {
    await this.until(() => this.replies.some((r) => r.id === id), timeoutMs);
    return this.replies.find((r) => r.id === id) ?? null;
  }

  /** Send a request and wait for its reply; throws an Error with the reply's code on ok: false. */
  async call<T = unknown>(id: number, op: string, args: unknown[] = [], payload?: Buffer): Promise<T> {
    this.write(request(id, op, args, payload));
    const r = await this.reply(id);
    if (r === null) throw Object.assign(new Error(`no reply to ${op} (connection ${this.isClosed ? 'closed' : 'silent'})`), { code: 'ENOREPLY' });
    if (!r.ok) throw Object.assign(new Error(r.error?.message ?? 'error'), { code: r.error?.code });
    return r.value as T;
  }

  close(): void {
    this.sock.destroy();
  }
}

/** A fault connection spoken by hand: HELLO, EVENTS, RESULTS; records what comes back. */
export class RawFault {
  readonly messages: WireMessage[] = [];
  readonly garbage: string[] = [];
  readonly closed: Promise<void>;
  isClosed = false;
  /** Answer every ANSWERS message with RESULTS (0 for each answer), as the native client does. */
  autoResults = true;
  answers = 0;
  private waiters: (() => void)[] = [];

  private constructor(readonly sock: net.Socket) {
    const reader = new MessageReader('daemon');
    sock.on('data', (chunk: Buffer) => {
      try {
        for (const m of reader.push(chunk)) {
          this.messages.push(m);
          if (m.type === Msg.Answers) {
            const as = decodeAnswersBody(m.body);
            this.answers += as.length;
            if (this.autoResults) {
              const body = Buffer.alloc(16 * as.length);
              as.forEach((a, i) => {
                body.writeUInt32LE((a.tag ?? 0) % 2 ** 32, i * 16);
                body.writeUInt32LE(Math.floor((a.tag ?? 0) / 2 ** 32), i * 16 + 4);
              });
              this.write(encodeMessage(Msg.Results, body));
            }
          }
        }
      } catch (err) {
        this.garbage.push((err as Error).message);
        sock.destroy();
      }
      this.wake();
    });
    sock.on('error', () => {});
    this.closed = new Promise((res) => sock.on('close', () => {
      this.isClosed = true;
      this.wake();
      res();
    }));
  }

  static async open(path: string): Promise<RawFault> {
    return new RawFault(await connect(path));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  write(b: Buffer): void {
    if (!this.isClosed && !this.sock.destroyed) this.sock.write(b);
  }

  hello(session: bigint, pid = process.pid): void {
    this.write(encodeHello(pid, session));
  }

  async until(pred: () => boolean, timeoutMs = 30000): Promise<boolean> {
    const t0 = Date.now();
    while (!pred() && !this.isClosed) {
      const left = timeoutMs - (Date.now() - t0);
      if (left <= 0) return false;
      await new Promise<void>((res) => {
        const timer = setTimeout(res, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          res();
        });
      });
    }
    return pred();
  }

  close(): void {
    this.sock.destroy();
  }
}

/** A 32-byte fault event. */
export function eventBytes(e: { region: number; flags?: number; count?: number; offset: number | bigint; tid?: number; seq?: number; timeNs?: bigint }): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(e.region >>> 0, 0);
  b.writeUInt16LE((e.flags ?? 0) & 0xffff, 4);
  b.writeUInt16LE((e.count ?? 1) & 0xffff, 6);
  b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(e.offset)), 8);
  b.writeUInt32LE((e.tid ?? process.pid) >>> 0, 16);
  b.writeUInt32LE((e.seq ?? 0) >>> 0, 20);
  b.writeBigUInt64LE(e.timeNs ?? process.hrtime.bigint(), 24);
  return b;
}

/** A wire message with a header of our choosing. */
export function wireMessage(type: number, body: Buffer, opts: { flags?: number; length?: number } = {}): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16LE(type & 0xffff, 0);
  h.writeUInt16LE((opts.flags ?? 0) & 0xffff, 2);
  h.writeUInt32LE((opts.length ?? body.length) >>> 0, 4);
  return Buffer.concat([h, body]);
}
