// The TS mirror of the native frames and wire (lib/native/frames.ts, wire.ts) against
// the C++ they mirror (native/frames.h, native/socket_channel.h), as compiled: the
// addon's frameLayout() gives every struct's size and field offsets (offsetof,
// sizeof) and every constant's value. A change on either side fails here:
// - a C++ constant or struct field is not in frameLayout() (parsed from the headers);
// - a C++ value differs from its TS mirror, or a TS constant has no C++ counterpart;
// - TS encoders and decoders do not put each field where the compiler does.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../dist/native/addon';
import * as frames from '../../dist/native/frames';
import * as wire from '../../dist/native/wire';

const layout = native().frameLayout();
const root = path.join(__dirname, '..', '..');

/** The `k…` constants and the struct fields a header declares (within `scope`, a namespace name, if given). */
function parseHeader(file: string, scope?: string): { constants: string[]; structs: Record<string, string[]> } {
  let text = fs.readFileSync(path.join(root, file), 'utf8');
  if (scope !== undefined) {
    const start = text.indexOf(`namespace ${scope} {`);
    const end = text.indexOf(`}  // namespace ${scope}`);
    if (start < 0 || end < 0) throw new Error(`no namespace ${scope} in ${file}`);
    text = text.slice(start, end);
  }
  text = text.replace(/\/\/.*$/gm, '');
  const constants = [...text.matchAll(/\b(k[A-Z]\w*)\s*=/g)].map((m) => m[1]!);
  const structs: Record<string, string[]> = {};
  for (const m of text.matchAll(/struct\s+(\w+)\s*\{([^}]*)\}/g)) {
    structs[m[1]!] = [...m[2]!.matchAll(/^\s*u?int\d+_t\s+(\w+)\s*;/gm)].map((f) => f[1]!);
  }
  return { constants, structs };
}

t.test('frameLayout() covers every constant and struct field of the headers', async (t) => {
  const h1 = parseHeader('native/frames.h');
  const h2 = parseHeader('native/socket_channel.h', 'wire');
  t.ok(h1.constants.length >= 20 && h2.constants.length >= 8 && Object.keys(h1.structs).length === 2 && Object.keys(h2.structs).length === 3, 'the headers were parsed');
  t.same([...h1.constants, ...h2.constants].sort(), Object.keys(layout.constants).sort(),
    'every k-constant of frames.h and of socket_channel.h\'s wire namespace is exported (native/binding/layout_binding.cc), and nothing else');
  const declared = { ...h1.structs, ...h2.structs };
  t.same(Object.keys(declared).sort(), Object.keys(layout.structs).sort(), 'the same structs');
  for (const [name, fields] of Object.entries(declared)) {
    t.same(fields, Object.keys(layout.structs[name]!.fields), `${name}: the same fields, in order`);
  }
});

// Every C++ constant and the TS constant that mirrors it. `null`: not mirrored, with why.
const MIRROR: Record<string, string | null> = {
  kFrameVersion: null, // never read by either side: the wire's version is kVersion
  kEvWrite: 'frames.EV_WRITE',
  kEvWp: 'frames.EV_WP',
  kEvNote: 'frames.EV_NOTE',
  kEvLow: 'frames.EV_LOW',
  kEvRun: 'frames.EV_RUN',
  kEvKernel: null, // reserved in C++ ("the kernel does not say"); never set, never read
  kOpInstall: 'frames.Op.Install',
  kOpZero: 'frames.Op.Zero',
  kOpCopy: 'frames.Op.Copy',
  kOpPoison: 'frames.Op.Poison',
  kOpRevoke: 'frames.Op.Revoke',
  kOpWake: 'frames.Op.Wake',
  kOpUnprotect: 'frames.Op.Unprotect',
  kOpSetDirect: 'frames.Op.SetDirect',
  kOpClearDirect: 'frames.Op.ClearDirect',
  kOpSetReserve: 'frames.Op.SetReserve',
  kOpClearReserve: 'frames.Op.ClearReserve',
  kOpTopUpReserve: 'frames.Op.TopUpReserve',
  kOpAddReserveRanges: 'frames.Op.AddReserveRanges',
  kOpReserveWindows: 'frames.Op.ReserveWindows',
  kOpStage: 'frames.Op.Stage',
  kOpStagePrepare: 'frames.Op.StagePrepare',
  kStageOwnFd: 'frames.STAGE_OWN_FD',
  kAnsWritable: 'frames.A_WRITABLE',
  kAnsPrivate: 'frames.A_PRIVATE',
  kAnsPopulate: 'frames.A_POPULATE',
  kAnsWp: 'frames.A_WP',
  kAnsNoWake: 'frames.A_NOWAKE',
  kAnsFromDevice: 'frames.A_FROM_DEVICE',
  kAnsAdopt: 'frames.A_ADOPT',
  kAnsWindow: 'frames.A_WINDOW',
  kAns2PopulateRead: 'frames.A2_POPULATE_READ',
  kResultRaced: 'frames.RESULT_RACED',
  kMsgEvents: 'wire.Msg.Events',
  kMsgAnswers: 'wire.Msg.Answers',
  kMsgResults: 'wire.Msg.Results',
  kMsgHello: 'wire.Msg.Hello',
  kMsgBye: 'wire.Msg.Bye',
  kMagic: 'wire.WIRE_MAGIC',
  kVersion: 'wire.WIRE_VERSION',
  kMaxBody: 'wire.MAX_BODY',
};

// TS constants mirrored by a struct's size rather than by a named C++ constant.
const SIZES: Record<string, string> = {
  'frames.EVENT_SIZE': 'FaultEvent',
  'frames.ANSWER_SIZE': 'Answer',
  'wire.HEADER_SIZE': 'Header',
  'wire.HELLO_SIZE': 'Hello',
  'wire.RESULT_SIZE': 'Result',
};

const MODULES: Record<string, Record<string, unknown>> = { frames, wire };

/** Every numeric constant frames.ts and wire.ts export, and every member of their Op and Msg tables: 'frames.EV_WRITE', 'wire.Msg.Bye', … */
function tsConstants(): Map<string, number> {
  const out = new Map<string, number>();
  for (const [mod, m] of Object.entries(MODULES)) {
    for (const [k, v] of Object.entries(m)) {
      if (typeof v === 'number') out.set(`${mod}.${k}`, v);
      else if (k === 'Op' || k === 'Msg') for (const [kk, vv] of Object.entries(v as Record<string, number>)) out.set(`${mod}.${k}.${kk}`, vv);
    }
  }
  return out;
}

t.test('every constant has the same value on both sides', async (t) => {
  const ts = tsConstants();
  t.same(Object.keys(MIRROR).sort(), Object.keys(layout.constants).sort(), 'this table names every C++ constant');
  for (const [k, ref] of Object.entries(MIRROR)) {
    if (ref !== null) t.equal(ts.get(ref), layout.constants[k], `${ref} = ${k} = ${layout.constants[k]}`);
  }
  for (const [ref, struct] of Object.entries(SIZES)) t.equal(ts.get(ref), layout.structs[struct]!.size, `${ref} = sizeof(${struct})`);
  const mirrored = new Set([...Object.values(MIRROR), ...Object.keys(SIZES)]);
  t.same([...ts.keys()].filter((ref) => !mirrored.has(ref)), [], 'every numeric constant of frames.ts and wire.ts mirrors a C++ one');
});

/** The value at a C++ field, as an unsigned bigint. */
function at(b: Buffer, base: number, [offset, size]: [number, number]): bigint {
  if (size === 8) return b.readBigUInt64LE(base + offset);
  return BigInt(b.readUIntLE(base + offset, size));
}

function fieldsOf(struct: string): Record<string, [number, number]> {
  return layout.structs[struct]!.fields;
}

t.test('TS encoders put every field where the compiler does, and decoders read it from there', async (t) => {
  // FaultEvent: distinct values in every field, each fitting its C++ size.
  const ev = { region: 0x11223344, flags: 0x5566, count: 0x7788, offset: 0x0102030405060 * 16, tid: 0x99aabbcc, seq: 0xddeeff01, timeNs: 0x0a0b0c0d0e0f1011n };
  const evBuf = Buffer.alloc(frames.EVENT_SIZE);
  frames.encodeEvent(evBuf, 0, ev);
  const evNames: Record<string, keyof typeof ev> = { region: 'region', flags: 'flags', count: 'count', offset: 'offset', tid: 'tid', seq: 'seq', time_ns: 'timeNs' };
  t.same(Object.keys(evNames).sort(), Object.keys(fieldsOf('FaultEvent')).sort(), 'every FaultEvent field is checked');
  for (const [c, f] of Object.entries(fieldsOf('FaultEvent'))) t.equal(at(evBuf, 0, f), BigInt(ev[evNames[c]!]), `FaultEvent.${c}`);
  t.same(frames.decodeEvent(evBuf, 0), ev, 'decodeEvent reads them back');

  // Answer, with a payload so `payload` (its length) is set.
  const ans = { op: frames.Op.Copy, flags: 0x7f, flags2: 0xbeef, region: 0x01020304, offset: 0x0a0b0c0d000, length: 0x0102030000, device: 0x0c0d0e0f, devOffset: 0x0708090a0b0c, tag: 0x0102030405 };
  const payload = Buffer.alloc(13, 0x5a);
  const ansBuf = new frames.AnswerBatch().add({ ...ans, payload }).bytes();
  t.equal(ansBuf.length, frames.ANSWER_SIZE + 16, 'the payload follows, padded to 8');
  const ansNames: Record<string, number> = {
    op: ans.op, flags: ans.flags, flags2: ans.flags2, region: ans.region, offset: ans.offset, length: ans.length,
    device: ans.device, payload: payload.length, dev_offset: ans.devOffset, tag: ans.tag,
  };
  t.same(Object.keys(ansNames).sort(), Object.keys(fieldsOf('Answer')).sort(), 'every Answer field is checked');
  for (const [c, f] of Object.entries(fieldsOf('Answer'))) t.equal(at(ansBuf, 0, f), BigInt(ansNames[c]!), `Answer.${c}`);
  const back = frames.decodeAnswer(ansBuf, 0);
  t.same({ ...back }, { ...ans, payloadLength: payload.length }, 'decodeAnswer reads them back');

  // Header and Hello: one HELLO message.
  const hello = wire.encodeHello(0x01020304, 0x1112131415161718n);
  const hdr: Record<string, number> = { type: wire.Msg.Hello, flags: 0, length: wire.HELLO_SIZE };
  t.same(Object.keys(hdr).sort(), Object.keys(fieldsOf('Header')).sort(), 'every Header field is checked');
  for (const [c, f] of Object.entries(fieldsOf('Header'))) t.equal(at(hello, 0, f), BigInt(hdr[c]!), `Header.${c}`);
  const hel: Record<string, bigint> = { magic: BigInt(wire.WIRE_MAGIC), version: BigInt(wire.WIRE_VERSION), pid: 0x01020304n, reserved: 0n, session: 0x1112131415161718n };
  t.same(Object.keys(hel).sort(), Object.keys(fieldsOf('Hello')).sort(), 'every Hello field is checked');
  for (const [c, f] of Object.entries(fieldsOf('Hello'))) t.equal(at(hello, wire.HEADER_SIZE, f), hel[c], `Hello.${c}`);
  t.same(wire.decodeHello(hello.subarray(wire.HEADER_SIZE)), { pid: 0x01020304, session: 0x1112131415161718n, version: wire.WIRE_VERSION });

  // Result: a negative errno in the signed field.
  const res = wire.encodeResults([{ tag: 0x0102030405060, result: -22 }]);
  const r: Record<string, bigint> = { tag: 0x0102030405060n, result: BigInt.asUintN(32, -22n), zero: 0n };
  t.same(Object.keys(r).sort(), Object.keys(fieldsOf('Result')).sort(), 'every Result field is checked');
  for (const [c, f] of Object.entries(fieldsOf('Result'))) t.equal(at(res, wire.HEADER_SIZE, f), r[c], `Result.${c}`);
  t.same(wire.decodeResultsBody(res.subarray(wire.HEADER_SIZE)), [{ tag: 0x0102030405060, result: -22 }]);
});
