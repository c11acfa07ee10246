// The wire protocol's JS side (lib/native/wire.ts): layouts, round trips, and the
// stream reader's refusals. No userfaultfd needed.
import t from 'tap';
import {
  MessageReader, Msg, HEADER_SIZE, HELLO_SIZE, RESULT_SIZE, MAX_BODY, WIRE_MAGIC,
  encodeMessage, encodeHello, decodeHello, encodeBye, encodeEvents, decodeEventsBody,
  encodeAnswers, decodeAnswersBody, encodeResults, decodeResultsBody, messageName,
} from '../../dist/native/wire';
import { AnswerBatch, Op, A_WRITABLE, type FaultEvent } from '../../dist/native/frames';

function header(type: number, flags: number, len: number): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt16LE(type, 0);
  b.writeUInt16LE(flags, 2);
  b.writeUInt32LE(len, 4);
  return b;
}

t.test('layouts', async (t) => {
  const hello = encodeHello(4242, 0x0102030405060708n);
  t.equal(hello.length, HEADER_SIZE + HELLO_SIZE);
  t.same([...hello.subarray(0, 8)], [4, 0, 0, 0, 24, 0, 0, 0], 'header: u16 type, u16 flags, u32 length, little-endian');
  t.equal(hello.toString('latin1', 8, 12), 'DXMP', 'the magic reads "DXMP" on the wire');
  t.equal(hello.readUInt32LE(8), WIRE_MAGIC);
  t.equal(hello.readUInt32LE(12), 1, 'version 1');
  t.equal(hello.readUInt32LE(16), 4242, 'pid');
  t.equal(hello.readUInt32LE(20), 0, 'reserved');
  t.equal(hello.readBigUInt64LE(24), 0x0102030405060708n, 'session');
  t.same([...encodeBye()], [5, 0, 0, 0, 0, 0, 0, 0]);
  const res = encodeResults([{ tag: 2 ** 40 + 7, result: -22 }]);
  t.equal(res.length, HEADER_SIZE + RESULT_SIZE);
  t.equal(res.readBigUInt64LE(8), BigInt(2 ** 40 + 7), 'u64 tag');
  t.equal(res.readInt32LE(16), -22, 'i32 result');
  t.equal(res.readUInt32LE(20), 0, 'zero');
  t.equal(messageName(Msg.Answers), 'ANSWERS');
  t.equal(messageName(77), 'type 77');
});

t.test('round trips through the stream reader, a byte at a time', async (t) => {
  const events: FaultEvent[] = [
    { region: 3, flags: 1, count: 2, offset: 8192, tid: 77, seq: 9, timeNs: 123456789n },
    { region: 4, flags: 3, count: 1, offset: 2 ** 40, tid: 78, seq: 10, timeNs: 5n },
  ];
  const stream = Buffer.concat([encodeHello(1, 99n), encodeEvents(events), encodeResults([{ tag: 5, result: 0 }, { tag: 6, result: 1 }]), encodeBye()]);
  const r = new MessageReader('client');
  const got = [];
  for (let i = 0; i < stream.length; i++) got.push(...r.push(stream.subarray(i, i + 1)));
  t.equal(r.pending, 0);
  t.same(got.map((m) => m.type), [Msg.Hello, Msg.Events, Msg.Results, Msg.Bye]);
  t.same(decodeHello(got[0]!.body), { pid: 1, session: 99n, version: 1 });
  t.same(decodeEventsBody(got[1]!.body), events);
  t.same(decodeResultsBody(got[2]!.body), [{ tag: 5, result: 0 }, { tag: 6, result: 1 }]);

  const batch = new AnswerBatch()
    .add({ op: Op.Install, flags: A_WRITABLE, region: 1, offset: 4096, length: 4096, device: 2, devOffset: 8192, tag: 11 })
    .add({ op: Op.Copy, region: 1, offset: 0, length: 4096, payload: Buffer.alloc(13, 0x5a), tag: 12 })
    .add({ op: Op.Wake, region: 1, offset: 0, length: 4096, tag: 13 });
  const d = new MessageReader('daemon');
  const msgs = d.push(Buffer.concat([encodeHello(2, 99n), encodeAnswers(batch)]));
  t.same(msgs.map((m) => m.type), [Msg.Hello, Msg.Answers], 'whole messages in one chunk');
  const answers = decodeAnswersBody(msgs[1]!.body);
  t.same(answers.map((a) => [a.op, a.tag, a.payloadLength]), [[Op.Install, 11, 0], [Op.Copy, 12, 13], [Op.Wake, 13, 0]]);
  t.same([...answers[1]!.payload!], [...Buffer.alloc(13, 0x5a)], 'payload, padding dropped');
  t.equal(answers[0]!.devOffset, 8192);
  t.equal(msgs[1]!.body.length % 8, 0, 'frames and padded payloads keep 8-byte alignment');
});

t.test('the reader refuses bad headers as soon as they are complete', async (t) => {
  const hello = encodeHello(1, 1n);
  const cases: [string, 'client' | 'daemon', Buffer, string, RegExp][] = [
    ['flags', 'daemon', Buffer.concat([hello, header(Msg.Answers, 1, 0)]), 'EPROTO', /flags 1/],
    ['oversize (header only)', 'daemon', Buffer.concat([hello, header(Msg.Answers, 0, MAX_BODY + 8)]), 'EMSGSIZE', /exceeds/],
    ['unknown type', 'daemon', Buffer.concat([hello, header(9, 0, 0)]), 'EPROTO', /unknown message type 9/],
    ['wrong direction', 'daemon', Buffer.concat([hello, header(Msg.Events, 0, 0)]), 'EPROTO', /not sent by the daemon/],
    ['wrong direction', 'client', Buffer.concat([hello, header(Msg.Answers, 0, 0)]), 'EPROTO', /not sent by the client/],
    ['HELLO first', 'client', header(Msg.Events, 0, 32), 'EPROTO', /expected HELLO first/],
    ['second HELLO', 'client', Buffer.concat([hello, hello]), 'EPROTO', /second HELLO/],
    ['HELLO size', 'client', header(Msg.Hello, 0, 16), 'EPROTO', /wrong size/],
    ['BYE with a body', 'client', Buffer.concat([hello, header(Msg.Bye, 0, 8)]), 'EPROTO', /wrong size/],
    ['EVENTS not frames', 'client', Buffer.concat([hello, header(Msg.Events, 0, 40)]), 'EPROTO', /wrong size/],
    ['RESULTS not frames', 'client', Buffer.concat([hello, header(Msg.Results, 0, 24)]), 'EPROTO', /wrong size/],
    ['ANSWERS not 8-aligned', 'daemon', Buffer.concat([hello, header(Msg.Answers, 0, 52)]), 'EPROTO', /wrong size/],
  ];
  for (const [what, from, bytes, code, msg] of cases) {
    const r = new MessageReader(from);
    t.throws(() => r.push(bytes), { code, message: msg }, what);
    t.throws(() => r.push(Buffer.alloc(0)), { code: 'EPROTO' }, `${what}: the stream stays failed`);
  }
});

t.test('body decoders refuse bad framing', async (t) => {
  t.throws(() => decodeHello(Buffer.alloc(23)), { code: 'EPROTO' });
  const bad = Buffer.alloc(24);
  t.throws(() => decodeHello(bad), { code: 'EPROTO', message: /magic/ });
  bad.writeUInt32LE(WIRE_MAGIC, 0);
  bad.writeUInt32LE(2, 4);
  t.throws(() => decodeHello(bad), { code: 'EPROTO', message: /version 2/ });
  t.throws(() => decodeEventsBody(Buffer.alloc(33)), { code: 'EPROTO' });
  t.throws(() => decodeResultsBody(Buffer.alloc(17)), { code: 'EPROTO' });
  t.throws(() => decodeAnswersBody(Buffer.alloc(40)), { code: 'EPROTO', message: /inside answer frame 0/ });
  const frame = Buffer.alloc(56);
  frame.writeUInt32LE(4096, 28);
  t.throws(() => decodeAnswersBody(frame), { code: 'EPROTO', message: /runs past/ });
  t.throws(() => encodeMessage(Msg.Answers, Buffer.alloc(MAX_BODY + 1)), { code: 'EMSGSIZE' });
  t.throws(() => encodeHello(1, -1n), { code: 'EINVAL' });
  t.same(decodeAnswersBody(Buffer.alloc(0)), [], 'an empty ANSWERS body is no answers');
});
