// The frame fuzzer: thousands of random and mutated frames against a running daxmapd,
// on control connections (lib/protocol/control.ts) and fault connections
// (docs/wire.md). Every fuzz connection gets an error reply or is disconnected, never
// more: no hang, no reply it did not ask for, no error that is not a proper code.
// Afterwards the daemon is the same process, a well-behaved client works end to end,
// nothing was logged as an error, the lock validator is clean, and once the daemon
// has stopped, fsck finds the pool clean.
//
// DAXMAP_SEED (decimal or 0x hex) and DAXMAP_FUZZ_FRAMES (default 3000) for long
// runs; the seed is printed on failure.
import t from 'tap';
import fs from 'node:fs';
import { startDaemon, startClient, PAGE, HUGE } from './helpers';
import { Rng, RawControl, RawFault, controlFrame, request, eventBytes, wireMessage, CONTROL_MAGIC } from './fuzz-wire';
import { encodeHello, Msg, decodeAnswersBody } from '../../dist/native/wire';
import { fsckErrors } from '../fsck';

const SEED = (() => {
  const s = process.env.DAXMAP_SEED;
  const v = s === undefined ? 0x5eed0005 : Number(s);
  return Number.isFinite(v) ? v >>> 0 : 0x5eed0005;
})();
const FRAMES = (() => {
  const v = Number(process.env.DAXMAP_FUZZ_FRAMES);
  return Number.isSafeInteger(v) && v > 0 ? v : 3000;
})();
const PARALLEL = 4;
const MiB = 1 << 20;
const MAX_JSON = 1 << 20;
const MAX_PAYLOAD = 32 << 20;
/** Error codes a request may legitimately fail with; anything else (EIO: an exception the service did not expect) is a finding. */
const CODES = new Set(['EINVAL', 'EBADF', 'ENOENT', 'EEXIST', 'EACCES', 'EPERM', 'EPROTO', 'ENOSPC', 'EMSGSIZE', 'EBUSY']);

// ---- values, good and bad ----

/** A number JSON.stringify cannot write (1e400 parses as Infinity, -0 as -0). */
class RawNum {
  constructor(readonly text: string) {}
}

function toJson(v: unknown): string {
  const raws: string[] = [];
  const s = JSON.stringify(v, (_k, x) => {
    if (x instanceof RawNum) {
      raws.push(x.text);
      return `\u0001RAW${raws.length - 1}\u0001`;
    }
    return x;
  });
  return s.replace(/"\\u0001RAW(\d+)\\u0001"/g, (_m, i: string) => raws[Number(i)]!);
}

interface Gen {
  v: unknown;
  /** definitely invalid here: the request must fail */
  bad: boolean;
}

const good = (v: unknown): Gen => ({ v, bad: false });
const bad = (v: unknown): Gen => ({ v, bad: true });

const BAD_NUMBERS: unknown[] = [-1, -4096, 1.5, 4096.5, 2 ** 53, 2 ** 64, 1e308, new RawNum('1e400'), new RawNum('-1e400'), '4096', null, true, {}, [], [4096]];
const NAMES = ['f0', 'f1', 'f2', 'f3', 'f4', 'f5'];
const BAD_NAMES: unknown[] = ['', 'a/b', '/', 'x\0y', '\0', 'x'.repeat(256), 'y'.repeat(300), 'é'.repeat(128), '\ud800', 5, null, true, {}, ['f0']];

class Session {
  handles: number[] = [];
  regions: { region: number; length: number }[] = [];
  constructor(readonly rng: Rng) {}

  name(): Gen {
    const r = this.rng;
    if (r.chance(0.2)) return bad(r.pick(BAD_NAMES));
    if (r.chance(0.1)) return good(`n${r.int(64)}`);
    if (r.chance(0.05)) return good('z'.repeat(255));
    return good(r.pick(NAMES));
  }

  handle(): Gen {
    const r = this.rng;
    if (this.handles.length > 0 && r.chance(0.85)) return good(r.pick(this.handles));
    return bad(r.pick([0, -1, 1e9, 2 ** 53, 1.5, '1', null, {}]));
  }

  /** A file offset / size / length: `min` is the least good value. */
  int(min = 0, max = 16 * MiB, page = false): Gen {
    const r = this.rng;
    if (r.chance(0.15)) {
      const v = r.pick(BAD_NUMBERS);
      // values that are in fact good for this position
      if (typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= 2 ** 44 && (!page || v % PAGE === 0)) return good(v);
      return bad(v);
    }
    if (r.chance(0.05)) return good(min);
    const v = page ? Math.max(min, r.int(max / PAGE) * PAGE) : Math.max(min, r.int(max));
    return good(v);
  }

  region(): Gen {
    const r = this.rng;
    if (this.regions.length > 0 && r.chance(0.7)) return good(r.pick(this.regions).region);
    if (r.chance(0.2)) return bad(r.pick([0, -1, 2 ** 32, 2 ** 53, 1.5, '7', null]));
    return good(1 + r.int(2 ** 31));
  }

  mapOpts(): Gen {
    const r = this.rng;
    if (r.chance(0.1)) return bad(r.pick([null, 5, 'private', [], { private: 'yes' }, { sync: 1 }]));
    return good({ private: r.chance(0.3), sync: r.chance(0.1), faultAround: r.chance(0.5) });
  }
}

interface FrameGen {
  bytes: Buffer;
  /** the request id to wait for (null: none) */
  id: number | null;
  op: string;
  /** error: must fail; any: may succeed or fail; fatal: the daemon must hang up */
  expect: 'error' | 'any' | 'fatal';
  desc: string;
}

const BIN = { $bin: true };

/** A request, valid or mutated, for a connection that said hello. */
function genRequest(s: Session, id: number): FrameGen {
  const r = s.rng;
  const mk = (op: string, gens: Gen[], opts: { payload?: Buffer; expect?: 'error' | 'any' } = {}): FrameGen => {
    const args = gens.map((g) => g.v);
    const json = toJson({ id, op, args });
    const anyBad = gens.some((g) => g.bad);
    return {
      bytes: controlFrame(json, opts.payload ?? null), id, op,
      expect: opts.expect ?? (anyBad ? 'error' : 'any'),
      desc: `${op} ${json.length > 300 ? `${json.slice(0, 300)}…` : json}${opts.payload ? ` +${opts.payload.length} payload bytes` : ''}`,
    };
  };
  const fileOpts = (): Gen => (r.chance(0.1)
    ? r.pick([good(null), good(7), good('x'), good({ create: 'yes' }), bad({ create: true, mode: 'rw' }), bad({ create: true, mode: -1 }), bad({ create: true, mode: 1.5 })])
    : good({ create: r.chance(0.7), ...(r.chance(0.2) ? { mode: r.pick([0o600, 0o644, 0o666, 0o7777]) } : {}) }));
  const keep = (): Gen => good(r.chance(0.5) ? { keepSize: r.chance(0.5) } : r.pick([null, 1, 'x']));
  switch (r.int(24)) {
    case 0: case 1: case 2: {
      const name = s.name();
      const o = fileOpts();
      return mk('openFile', [name, o]);
    }
    case 3: return mk('unlink', [s.name()]);
    case 4: return mk('rename', [s.name(), s.name()]);
    case 5: return mk(r.pick(['list', 'statfs', 'stats', 'statsByFile', 'lockdep']), r.chance(0.2) ? [good(r.pick([1, 'x', null]))] : []);
    case 6: return mk(r.pick(['testInject', 'testExit', 'close', 'hello', 'attach']), [good(r.pick([{ where: 'any' }, {}, null, 1]))], { expect: 'error' });
    case 7: return mk('configure', [r.chance(0.8) ? good({ windowBudget: 1 + r.int(100000) }) : bad(r.pick([{ windowBudget: -1 }, { windowBudget: 'x' }, { windowBudget: 0.5 }]))]);
    case 8: return mk('stat', [s.handle()]);
    case 9: case 10: return mk('truncate', [s.handle(), s.int(0, 16 * MiB)]);
    case 11: return mk('fallocate', [s.handle(), s.int(0, 16 * MiB), s.int(1, 8 * MiB), keep()]);
    case 12: return mk(r.pick(['punchHole', 'zeroRange']), [s.handle(), s.int(0, 16 * MiB), s.int(1, 8 * MiB), keep()]);
    case 13: case 14: {
      const n = r.chance(0.1) ? 0 : r.int(64 * 1024);
      const payload = r.bytes(Math.min(n, 4096));
      const data = n > 4096 ? Buffer.concat([payload, Buffer.alloc(n - 4096, 0x5a)]) : payload;
      if (r.chance(0.1)) return mk('write', [s.handle(), bad(r.pick(['text', 5, null, [1, 2], { data: 1 }])), s.int(0, 16 * MiB)]);
      if (r.chance(0.05)) return mk('write', [s.handle(), bad(r.pick(['text', 5])), s.int(0, 16 * MiB)], { payload: data }); // a payload nobody claims
      return mk('write', [s.handle(), good(BIN), s.int(0, 16 * MiB)], { payload: data });
    }
    case 15: case 16: {
      const len = r.chance(0.1) ? bad(r.pick([-1, 1.5, 2 ** 31, 2 ** 32 + 1, 1e12, 'x', null])) : good(r.int(256 * 1024));
      return mk('read', [s.handle(), len, s.int(0, 16 * MiB)]);
    }
    case 17: return mk(r.pick(['fsync', 'closeFile']), [r.chance(0.5) ? s.handle() : good(r.pick([0, -1, 'x', null]))], { expect: 'any' });
    case 18: case 19: {
      // map: the region is this connection's business; the daemon must still check every argument
      return mk('map', [s.handle(), s.region(), s.int(0, 16 * MiB, true), s.int(PAGE, 8 * MiB, true), s.mapOpts()]);
    }
    case 20: return mk('unmap', [good(s.region().v)]);
    case 21: return mk('flush', [s.region(), s.int(0, 64 * 1024), s.int(0, 64 * 1024)], { expect: 'any' });
    case 22: {
      const dev = r.chance(0.7) ? good(1 + r.int(2 ** 31)) : bad(r.pick([0, -1, 2 ** 33, 'x', null, 1.5]));
      return mk('attachDevice', [dev]);
    }
    default: {
      const op = r.pick(['', 'OPENFILE', 'openfile', 'open', '__proto__', 'constructor', 'toString', 'map ', 'x'.repeat(1000), `op${r.u32()}`]);
      return mk(op, [good(1), good('f0')], { expect: 'error' });
    }
  }
}

/** A frame the daemon must hang up on (after hello or before). */
function genFatal(s: Session, id: number): FrameGen {
  const r = s.rng;
  const f = (bytes: Buffer, desc: string): FrameGen => ({ bytes, id: null, op: '-', expect: 'fatal', desc });
  switch (r.int(12)) {
    case 0: return f(controlFrame('{"id":1,"op":"list",'), 'JSON cut short');
    case 1: return f(controlFrame(r.bytes(1 + r.int(64))), 'binary garbage as JSON');
    case 2: return f(controlFrame(r.pick(['[]', 'null', '5', '"x"', 'true'])), 'JSON that is not an object');
    case 3: return f(controlFrame('{}', null, { json: MAX_JSON + 1 + r.int(2 ** 30) }), 'JSON length past the limit');
    case 4: return f(controlFrame('{}', null, { json: 0 }), 'JSON length 0');
    case 5: return f(controlFrame(toJson({ id, op: 'list', args: [] }), null, { payload: MAX_PAYLOAD + 1 + r.int(2 ** 30) }), 'payload length past the limit');
    case 6: return f(controlFrame(`\ufeff${toJson({ id, op: 'list', args: [] })}`), 'JSON after a byte-order mark');
    case 7: return f(controlFrame(toJson({ id, op: 5, args: [] })), 'op not a string');
    case 8: return f(controlFrame(toJson({ id: r.pick([1.5, '1', null, 2 ** 60]), op: 'list', args: [] })), 'id not a safe integer');
    case 9: return f(controlFrame(toJson({ id, op: 'list', args: r.pick([null, {}, 'x', 5]) })), 'args not an array');
    case 10: return f(controlFrame(toJson({ id, op: 'list' })), 'args missing');
    default: return f(Buffer.concat([Buffer.alloc(4, 0xff), r.bytes(4 + r.int(28))]), 'a header of 0xffffffff');
  }
}

// ---- the fuzz connections ----

interface Tally {
  frames: number;
  connections: number;
  replies: number;
  errors: number;
  ok: number;
  hangups: number;
  answers: number;
}

class Fuzzer {
  readonly problems: string[] = [];
  readonly tally: Tally = { frames: 0, connections: 0, replies: 0, errors: 0, ok: 0, hangups: 0, answers: 0 };
  private nextFile = 0;

  constructor(private readonly socket: string) {}

  problem(what: string): void {
    if (this.problems.length < 50) this.problems.push(what);
  }

  get done(): boolean {
    return this.tally.frames >= FRAMES;
  }

  /** Every reply must answer a request of this connection. */
  private checkReplies(c: RawControl, ids: Set<number>, ctx: string): void {
    for (const rep of c.replies) {
      if ('notice' in rep) this.problem(`${ctx}: an unasked-for notice ${JSON.stringify(rep)}`);
      else if (!ids.has(rep.id)) this.problem(`${ctx}: a reply to id ${rep.id}, never sent`);
    }
    if (c.garbage.length) this.problem(`${ctx}: undecodable bytes from the daemon: ${c.garbage[0]}`);
  }

  private async expectHangup(c: { closed: Promise<void>; isClosed: boolean }, ctx: string, ms = 5000): Promise<void> {
    await Promise.race([c.closed, new Promise((r) => setTimeout(r, ms))]);
    if (!c.isClosed) this.problem(`${ctx}: not disconnected within ${ms} ms`);
    else this.tally.hangups++;
  }

  /** Write a frame, sometimes in pieces. */
  private async write(c: { write(b: Buffer): void }, rng: Rng, b: Buffer): Promise<void> {
    if (b.length > 2 && rng.chance(0.15)) {
      const cut = 1 + rng.int(b.length - 1);
      c.write(b.subarray(0, cut));
      await new Promise((r) => setImmediate(r));
      c.write(b.subarray(cut));
    } else {
      c.write(b);
    }
  }

  /** A control connection: hello (mostly), then requests valid and mutated, maybe a fatal frame. */
  async control(rng: Rng): Promise<void> {
    const c = await RawControl.open(this.socket);
    this.tally.connections++;
    const s = new Session(rng);
    const ids = new Set<number>();
    let id = 1;
    const ctx = (d: string): string => `control #${this.tally.connections} ${d}`;
    try {
      if (rng.chance(0.1)) {
        // requests before hello: each an EPROTO reply
        for (let k = 1 + rng.int(3); k > 0; k--) {
          let g = genRequest(s, id++);
          while (g.op === 'hello') g = genRequest(s, id++);
          ids.add(g.id!);
          c.write(g.bytes);
          this.tally.frames++;
          const rep = await c.reply(g.id!);
          if (rep === null) this.problem(ctx(`request before hello (${g.desc}): ${c.isClosed ? 'disconnected' : 'no reply'}`));
          else if (rep.ok || rep.error?.code !== 'EPROTO') this.problem(ctx(`request before hello (${g.desc}) got ${JSON.stringify(rep)}`));
          else this.tally.errors++;
        }
      }
      ids.add(id);
      c.write(request(id, 'hello', [{ pid: process.pid }]));
      this.tally.frames++;
      const h = await c.reply(id++);
      if (!h?.ok) {
        this.problem(ctx(`hello failed: ${JSON.stringify(h)}`));
        return;
      }
      const n = 1 + rng.int(24);
      for (let k = 0; k < n && !this.done; k++) {
        const fatal = rng.chance(0.04);
        const g = fatal ? genFatal(s, id++) : genRequest(s, id++);
        if (g.id !== null) ids.add(g.id);
        await this.write(c, rng, g.bytes);
        this.tally.frames++;
        if (g.expect === 'fatal') {
          await this.expectHangup(c, ctx(g.desc));
          break;
        }
        const rep = await c.reply(g.id!);
        if (rep === null) {
          this.problem(ctx(`${g.desc}: ${c.isClosed ? 'disconnected' : 'no reply within 10 s'}`));
          break;
        }
        this.tally.replies++;
        if (rep.ok) {
          this.tally.ok++;
          if (g.expect === 'error') this.problem(ctx(`${g.desc}: succeeded (${JSON.stringify(rep.value)?.slice(0, 200)}), expected an error`));
          const v = rep.value as { handle?: number } | null;
          if (g.op === 'openFile' && typeof v?.handle === 'number') s.handles.push(v.handle);
          if (g.op === 'map') {
            const args = (JSON.parse(g.bytes.toString('utf8', 8, 8 + g.bytes.readUInt32LE(0))) as { args: number[] }).args;
            s.regions.push({ region: args[1]!, length: args[3]! });
          }
        } else {
          this.tally.errors++;
          if (!CODES.has(rep.error?.code ?? '')) this.problem(ctx(`${g.desc}: error ${rep.error?.code}: ${rep.error?.message}`));
        }
      }
      if (!c.isClosed && rng.chance(0.1)) {
        // a frame cut short, then we hang up
        const g = genRequest(s, id++);
        c.write(g.bytes.subarray(0, rng.int(g.bytes.length)));
        this.tally.frames++;
      }
    } finally {
      this.checkReplies(c, ids, ctx('replies'));
      c.close();
    }
  }

  /** Bytes that are no control connection at all: wrong magic, no magic, garbage. */
  async junk(rng: Rng): Promise<void> {
    const c = await RawControl.open(this.socket, { magic: false });
    this.tally.connections++;
    const ctx = `junk #${this.tally.connections}`;
    const kind = rng.int(6);
    let b: Buffer;
    let hangup = true;
    switch (kind) {
      case 0: b = Buffer.from(rng.pick(['DXC2', 'DXC0', 'dxc1', 'DXMP', 'D\0\0\0'])); break;
      case 1: b = Buffer.concat([Buffer.from([rng.pick([0x00, 0x01, 0x02, 0x03, 0x05, 0x7b, 0xff])]), rng.bytes(rng.int(64))]); break;
      case 2: b = request(1, 'hello', []); break; // a frame without the magic ({ is not D)
      case 3: b = Buffer.concat([CONTROL_MAGIC, rng.bytes(8 + rng.int(64))]); b.writeUInt32LE(MAX_JSON + 1 + rng.int(1000), 4); break;
      case 4: b = Buffer.from('DX'); hangup = false; break; // cut short: we hang up
      default: {
        // a fault connection of garbage: a wire header, then random bytes
        const type = rng.pick([4, 4, 1, 3, 0x404]);
        const flags = rng.chance(0.3) ? 1 : 0;
        const len = rng.pick([0, 23, 24, 25, 1 << 30]);
        const body = rng.bytes(rng.int(40));
        b = Buffer.concat([wireMessage(type, Buffer.alloc(0), { flags, length: len }), body]);
        // a HELLO of the right size whose body has not all come: the daemon waits; we hang up
        hangup = !(type === 4 && flags === 0 && len === 24 && body.length < 24);
      }
    }
    c.write(b);
    this.tally.frames++;
    if (hangup) await this.expectHangup(c, `${ctx} (${b.subarray(0, 16).toString('hex')})`, 12000);
    if (c.replies.length) this.problem(`${ctx}: got a reply ${JSON.stringify(c.replies[0])}`);
    c.close();
  }

  /** A fault connection: a real session with mappings, then events, results and junk. */
  async fault(rng: Rng): Promise<void> {
    const c = await RawControl.open(this.socket);
    this.tally.connections++;
    const ctx = (d: string): string => `fault #${this.tally.connections} ${d}`;
    const file = `fz${this.nextFile++}`;
    let id = 1;
    const regions: { region: number; length: number; fileOffset: number }[] = [];
    let f: RawFault | null = null;
    try {
      const h = await c.call<{ session: string }>(id++, 'hello', [{ pid: process.pid }]);
      await c.call(id++, 'attachDevice', [1 + rng.int(1000)]);
      const { handle } = await c.call<{ handle: number }>(id++, 'openFile', [file, { create: true }]);
      await c.call(id++, 'truncate', [handle, 4 * MiB + rng.int(4) * PAGE]);
      for (let k = 1 + rng.int(3); k > 0; k--) {
        const region = 1 + rng.int(2 ** 31);
        const fileOffset = rng.pick([0, 0, HUGE, PAGE * rng.int(512)]);
        const length = PAGE * (1 + rng.int(1536));
        const priv = rng.chance(0.3);
        await c.call(id++, 'map', [handle, region, fileOffset, length, { private: priv, sync: !priv && rng.chance(0.1), faultAround: rng.chance(0.5) }]);
        regions.push({ region, length, fileOffset });
      }
      this.tally.frames += id - 1;
      f = await RawFault.open(this.socket);
      const session = BigInt(h.session);
      // the HELLO: mostly right
      const hk = rng.int(20);
      let helloBytes: Buffer;
      let helloOk = false;
      if (hk === 0) helloBytes = encodeHello(process.pid, (session + 1n) % 2n ** 64n); // no such session
      else if (hk === 1) {
        helloBytes = encodeHello(process.pid, session);
        helloBytes.writeUInt32LE(0x12345678, 8); // wrong magic
      } else if (hk === 2) {
        helloBytes = encodeHello(process.pid, session);
        helloBytes.writeUInt32LE(2, 12); // version 2
      } else if (hk === 3) helloBytes = wireMessage(Msg.Hello, rng.bytes(rng.pick([0, 16, 23, 25, 32])));
      else if (hk === 4) helloBytes = wireMessage(Msg.Events, eventBytes({ region: regions[0]!.region, offset: 0 })); // EVENTS first
      else if (hk === 5) {
        helloBytes = encodeHello(process.pid, session);
        helloBytes.writeUInt16LE(1, 2); // flags
      } else {
        helloBytes = encodeHello(process.pid, session);
        helloOk = true;
      }
      await this.write(f, rng, helloBytes);
      this.tally.frames++;
      if (!helloOk) {
        await this.expectHangup(f, ctx(`bad HELLO ${hk}`));
        if (f.messages.length) this.problem(ctx(`bad HELLO ${hk} was answered`));
        return;
      }
      if (!(await f.until(() => f!.messages.length > 0, 30000))) {
        this.problem(ctx(`no HELLO back (${f.isClosed ? 'disconnected' : 'silent'})`));
        return;
      }
      const back = f.messages[0]!;
      if (back.type !== Msg.Hello || back.body.readBigUInt64LE(16) !== session) this.problem(ctx('the daemon\'s HELLO does not echo the session'));
      const unknown = new Set<number>();
      f.autoResults = !rng.chance(0.05);
      const n = 1 + rng.int(16);
      for (let k = 0; k < n && !this.done && !f.isClosed; k++) {
        const kind = rng.int(20);
        this.tally.frames++;
        if (kind < 9) {
          // events for our mappings, inside them
          const evs: Buffer[] = [];
          for (let e = 1 + rng.int(8); e > 0; e--) {
            const m = rng.pick(regions);
            evs.push(eventBytes({ region: m.region, offset: rng.int(m.length / PAGE) * PAGE, flags: rng.int(4), count: 1 + rng.int(3), timeNs: rng.chance(0.1) ? BigInt(rng.u32()) * BigInt(rng.u32()) : undefined }));
          }
          const before = f.answers;
          await this.write(f, rng, wireMessage(Msg.Events, Buffer.concat(evs)));
          if (f.autoResults && !(await f.until(() => f!.answers >= before + evs.length, 30000))) {
            this.problem(ctx(`${evs.length} events got ${f.answers - before} answers (${f.isClosed ? 'disconnected' : 'silent'})`));
          }
        } else if (kind < 11) {
          // a region that does not exist: SIGBUS answers
          const region = 1 + rng.int(2 ** 31);
          if (regions.some((m) => m.region === region)) continue;
          unknown.add(region);
          const before = f.answers;
          await this.write(f, rng, wireMessage(Msg.Events, eventBytes({ region, offset: rng.int(1 << 20) * PAGE, flags: rng.int(4) })));
          if (f.autoResults && !(await f.until(() => f!.answers > before, 30000))) this.problem(ctx('an event on an unknown region got no answer'));
        } else if (kind === 11) {
          // results nobody asked for: ignored
          const body = rng.bytes(16 * (1 + rng.int(4)));
          for (let i = 0; i < body.length; i += 16) body.writeUInt32LE(0, i + 12);
          await this.write(f, rng, wireMessage(Msg.Results, body));
        } else if (kind === 12) {
          await this.write(f, rng, wireMessage(Msg.Events, Buffer.alloc(0))); // no events
        } else {
          // fatal: the daemon must hang up
          const m = rng.pick(regions);
          const fatal: [string, Buffer][] = [
            ['an offset past the mapping', wireMessage(Msg.Events, eventBytes({ region: m.region, offset: m.length + PAGE * rng.int(1000) }))],
            ['an offset that is not page-aligned', wireMessage(Msg.Events, eventBytes({ region: m.region, offset: 1 + rng.int(PAGE - 1) }))],
            ['an offset of 2^63', wireMessage(Msg.Events, eventBytes({ region: m.region, offset: 1n << 63n }))],
            ['a length past 16 MiB', wireMessage(Msg.Events, Buffer.alloc(0), { length: (16 << 20) + 32 * (1 + rng.int(1000)) })],
            ['flags', wireMessage(Msg.Events, eventBytes({ region: m.region, offset: 0 }), { flags: 1 + rng.int(0xfffe) })],
            ['an unknown type', wireMessage(rng.pick([0, 6, 7, 0xffff]), Buffer.alloc(0))],
            ['ANSWERS from a client', wireMessage(Msg.Answers, Buffer.alloc(48))],
            ['a second HELLO', encodeHello(process.pid, session)],
            ['BYE', wireMessage(Msg.Bye, Buffer.alloc(0))],
            ['EVENTS of 33 bytes', wireMessage(Msg.Events, Buffer.alloc(33))],
            ['RESULTS of 17 bytes', wireMessage(Msg.Results, Buffer.alloc(17))],
          ];
          const [what, bytes] = rng.pick(fatal);
          await this.write(f, rng, bytes);
          await this.expectHangup(f, ctx(what));
          break;
        }
      }
      // what came back: HELLO, then ANSWERS on our regions (poison on the unknown ones), maybe BYE
      for (const m of f.messages.slice(1)) {
        if (m.type === Msg.Bye) continue;
        if (m.type !== Msg.Answers) {
          this.problem(ctx(`message type ${m.type} from the daemon`));
          continue;
        }
        for (const a of decodeAnswersBody(m.body)) {
          if (unknown.has(a.region)) {
            if (a.op !== 4) this.problem(ctx(`answer op ${a.op} on an unknown region`));
          } else if (!regions.some((r) => r.region === a.region)) this.problem(ctx(`an answer on region ${a.region}, never mapped`));
        }
      }
      if (f.garbage.length) this.problem(ctx(`undecodable bytes from the daemon: ${f.garbage[0]}`));
      this.tally.answers += f.answers;
      if (rng.chance(0.2)) {
        // leave it all behind: the daemon cleans up after a client that just goes
        return;
      }
      f.close();
      await c.call(id++, 'unlink', [file]);
    } catch (err) {
      this.problem(ctx(`setup failed: ${(err as Error).message}`));
    } finally {
      f?.close();
      c.close();
    }
  }
}

t.test('the frame fuzzer: error replies or disconnects, never more; the daemon and the pool survive', async (t) => {
  t.comment(`DAXMAP_SEED=${SEED} (0x${SEED.toString(16)}) DAXMAP_FUZZ_FRAMES=${FRAMES}`);
  t.teardown(() => {
    if (!t.passing()) console.error(`# the fuzzer failed: rerun with DAXMAP_SEED=${SEED} DAXMAP_FUZZ_FRAMES=${FRAMES}`);
  });
  const device = `/dev/shm/daxmap-fuzz-${process.pid}.pool`;
  t.teardown(() => fs.rmSync(device, { force: true }));
  // Test hooks off: testExit and testInject are refused like any other client's.
  const d = await startDaemon({ device, size: '256M', env: { DAXMAP_TEST_HOOKS: '0' } });
  t.teardown(() => d.stop());
  const pid = d.proc.pid;

  // A well-behaved client with a live mapping through it all.
  const good = await startClient(d.socket);
  t.teardown(() => good.kill());
  await good.call('open', { name: 'keep', create: true });
  await good.call('truncate', { name: 'keep', size: 4 * HUGE });
  await good.call('map', { name: 'keep', id: 1 });
  await good.call('store', { id: 1, offset: 100, text: 'before the fuzz' });

  const fz = new Fuzzer(d.socket);
  const t0 = Date.now();
  await Promise.all(Array.from({ length: PARALLEL }, async (_x, w) => {
    const rng = new Rng(SEED ^ Math.imul(w + 1, 0x9e3779b9));
    while (!fz.done && fz.problems.length < 50) {
      const k = rng.int(10);
      if (k < 6) await fz.control(rng);
      else if (k < 8) await fz.fault(rng);
      else await fz.junk(rng);
    }
  }));
  const tl = fz.tally;
  t.comment(`${tl.frames} frames on ${tl.connections} connections in ${Date.now() - t0} ms: ${tl.replies} replies (${tl.ok} ok, ${tl.errors} errors), ` +
    `${tl.hangups} hang-ups, ${tl.answers} fault answers`);
  t.same(fz.problems, [], `every fuzz connection got error replies or a hang-up, never more (seed ${SEED})`);

  t.equal(d.proc.exitCode, null, 'daxmapd is still running');
  t.equal(d.proc.signalCode, null);

  // The well-behaved client still works end to end.
  t.equal(await good.call('load', { id: 1, offset: 100, length: 15 }), 'before the fuzz', 'a mapping made before the fuzz still reads its store');
  const c = await startClient(d.socket);
  t.teardown(() => c.kill());
  await c.call('open', { name: 'after', create: true });
  await c.call('truncate', { name: 'after', size: 2 * HUGE });
  t.equal(await c.call('write', { name: 'after', offset: 0, text: 'file.write' }), 10);
  await c.call('map', { name: 'after', id: 1, opts: { faultAround: false } });
  await c.call('store', { id: 1, offset: HUGE + 7, text: 'a store' });
  t.equal(await c.call('load', { id: 1, offset: 0, length: 10 }), 'file.write', 'the mapping sees file.write');
  t.equal(await c.call('read', { name: 'after', offset: HUGE + 7, length: 7 }), 'a store', 'file.read sees the store');
  await c.call('open', { name: 'keep' });
  await c.call('map', { name: 'keep', id: 2 });
  await c.call('store', { id: 2, offset: 200, text: 'after the fuzz' });
  t.equal(await good.call('load', { id: 1, offset: 200, length: 14 }), 'after the fuzz', 'the two clients\' mappings are coherent');

  // Same daemon, no lock-order violations, nothing logged as an error.
  const root = await RawControl.open(d.socket);
  const h = await root.call<{ daemonPid: number }>(1, 'hello', [{}]);
  t.equal(h.daemonPid, pid, 'the same daxmapd process');
  t.same(await root.call(2, 'lockdep'), [], 'no lock-order violations');
  root.close();
  const errors = d.log.filter((l) => {
    try {
      return (JSON.parse(l) as { level: number }).level >= 50;
    } catch {
      return l.trim().length > 0; // stderr, or not a log line
    }
  });
  t.same(errors.slice(0, 5), [], 'nothing logged at error level (an unexpected exception in the daemon)');

  await c.call('close');
  await good.call('close');
  t.same(await d.stop('SIGTERM', true), { code: 0, signal: null }, 'daxmapd exits 0 on SIGTERM');
  t.same(fsckErrors(device), [], 'fsck: the pool is clean');
});
