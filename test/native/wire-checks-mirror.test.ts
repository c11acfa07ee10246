// The wire checks, on both sides: what the daemon sends is checked by the client's
// native socket channel (native/socket_channel.cc), and lib/native/wire.ts has the
// same checks in TS (MessageReader('daemon'), decodeHello, decodeAnswersBody) for
// tests and fakes. Each stream below goes to a real native channel over a UNIX
// socket and through the TS reader: both must refuse it with the same code, or both
// accept it. Changing a rule on one side alone fails here.
import t from 'tap';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { SocketFaultChannel } from '../../dist/native/socket-channel';
import { MessageReader, Msg, HELLO_SIZE, MAX_BODY, WIRE_MAGIC, encodeHello, encodeMessage, decodeHello, decodeAnswersBody } from '../../dist/native/wire';
import { ANSWER_SIZE, Op } from '../../dist/native/frames';
import { isDaxError } from '../../dist/errors';

const SESSION = 4242n;

function hdr(type: number, flags: number, len: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt16LE(type, 0);
  b.writeUInt16LE(flags, 2);
  b.writeUInt32LE(len, 4);
  return b;
}

function helloBody(magic: number, version: number): Buffer {
  const b = Buffer.alloc(HELLO_SIZE);
  b.writeUInt32LE(magic, 0);
  b.writeUInt32LE(version, 4);
  b.writeUInt32LE(process.pid, 8);
  b.writeBigUInt64LE(SESSION, 16);
  return b;
}

const HELLO = encodeHello(process.pid, SESSION);
/** One ANSWERS message: a frame claiming `payload` bytes, in a body of `body` bytes. */
function answers(payload: number, body: number): Buffer {
  const b = Buffer.alloc(body);
  b.writeUInt8(Op.Wake, 0);
  b.writeUInt32LE(payload, 28);
  return encodeMessage(Msg.Answers, b);
}

// [what, bytes the daemon sends, 'ok' or the code both sides refuse it with]
const CASES: [string, Buffer, string][] = [
  ['HELLO, then an empty ANSWERS', Buffer.concat([HELLO, encodeMessage(Msg.Answers)]), 'ok'],
  ['HELLO, then an answer with its payload', Buffer.concat([HELLO, answers(5, ANSWER_SIZE + 8)]), 'ok'],
  ['flags set', Buffer.concat([HELLO, hdr(Msg.Answers, 1, 0)]), 'EPROTO'],
  ['a body over the limit', Buffer.concat([HELLO, hdr(Msg.Answers, 0, MAX_BODY + 8)]), 'EMSGSIZE'],
  ['an unknown type', Buffer.concat([HELLO, hdr(9, 0, 0)]), 'EPROTO'],
  ['RESULTS from the daemon', Buffer.concat([HELLO, hdr(Msg.Results, 0, 16), Buffer.alloc(16)]), 'EPROTO'],
  ['EVENTS from the daemon', Buffer.concat([HELLO, hdr(Msg.Events, 0, 32), Buffer.alloc(32)]), 'EPROTO'],
  ['ANSWERS before HELLO', encodeMessage(Msg.Answers), 'EPROTO'],
  ['a second HELLO', Buffer.concat([HELLO, HELLO]), 'EPROTO'],
  ['HELLO of the wrong size', Buffer.concat([hdr(Msg.Hello, 0, 16), Buffer.alloc(16)]), 'EPROTO'],
  ['BYE with a body', Buffer.concat([HELLO, hdr(Msg.Bye, 0, 8), Buffer.alloc(8)]), 'EPROTO'],
  ['ANSWERS not a multiple of 8', Buffer.concat([HELLO, hdr(Msg.Answers, 0, 52), Buffer.alloc(52)]), 'EPROTO'],
  ['an answer frame cut short', Buffer.concat([HELLO, answers(0, 40)]), 'EPROTO'],
  ['a payload running past its message', Buffer.concat([HELLO, answers(4096, ANSWER_SIZE + 8)]), 'EPROTO'],
  ['bad HELLO magic', encodeMessage(Msg.Hello, helloBody(0x12345678, 1)), 'EPROTO'],
  ['HELLO of version 2', encodeMessage(Msg.Hello, helloBody(WIRE_MAGIC, 2)), 'EPROTO'],
];

/** The TS side's verdict on a stream from the daemon. */
function tsVerdict(bytes: Buffer): string {
  try {
    for (const m of new MessageReader('daemon').push(bytes)) {
      if (m.type === Msg.Hello) decodeHello(m.body);
      else if (m.type === Msg.Answers) decodeAnswersBody(m.body);
    }
    return 'ok';
  } catch (err) {
    return isDaxError(err) ? err.code : `not a daxmap error: ${String(err)}`;
  }
}

/**
 * The native side's verdict: a channel connects to `server`, which answers its HELLO
 * with `bytes`. Refused: the channel dies with "<CODE>: …". Accepted: it answers each
 * ANSWERS with a RESULTS message (the last thing the stream asks for), and lives on.
 */
function nativeVerdict(server: net.Server, sockPath: string, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const expectResults = tsVerdict(bytes) === 'ok' ? new MessageReader('daemon').push(bytes).filter((m) => m.type === Msg.Answers).length : -1;
    let ch: SocketFaultChannel | null = null;
    const done = (v: string): void => {
      ch?.close();
      resolve(v);
    };
    server.once('connection', (sock) => {
      sock.on('error', () => {});
      const reader = new MessageReader('client');
      let results = 0;
      let sent = false;
      sock.on('data', (chunk: Buffer) => {
        let msgs;
        try {
          msgs = reader.push(chunk);
        } catch (err) {
          done(`the channel sent something malformed: ${String(err)}`);
          return;
        }
        for (const m of msgs) {
          if (m.type === Msg.Hello && !sent) {
            sent = true;
            sock.write(bytes);
          } else if (m.type === Msg.Results && ++results === expectResults) {
            done(ch?.reason === undefined ? 'ok' : `closed: ${ch.reason}`);
          }
        }
      });
    });
    ch = SocketFaultChannel.connect(sockPath, {
      session: SESSION,
      onClose: (err) => done(/closed: (E[A-Z]+):/.exec(err.message)?.[1] ?? err.message),
    });
  });
}

t.test('the native channel and the TS reader refuse the same streams, with the same code', async (t) => {
  const sockPath = path.join(os.tmpdir(), `daxmap-test-wirecheck-${process.pid}.sock`);
  const server = net.createServer();
  await new Promise<void>((res) => server.listen(sockPath, res));
  t.teardown(() => {
    server.close();
    fs.rmSync(sockPath, { force: true });
  });
  for (const [what, bytes, want] of CASES) {
    t.equal(tsVerdict(bytes), want, `TS: ${what}`);
    t.equal(await nativeVerdict(server, sockPath, bytes), want, `native: ${what}`);
  }
});
