// The wire protocol of a socket fault channel (docs/wire.md): 8-byte headers, then
// event, answer and result frames. The client side is native (native/socket_channel.*);
// this is the daemon's side in JS (read EVENTS, send ANSWERS, read RESULTS) plus the
// client's messages for tests. Keep in step with native/socket_channel.h
// (test/native/layout-mirror.test.ts compares the two as compiled).
import { daxError } from '../errors';
import { checkU64, readU64, writeU64 } from '../util/u64';
import { FrameReader } from '../util/frame-reader';
import { ANSWER_SIZE, EVENT_SIZE, decodeAnswer, decodeEvents, encodeEvent, type AnswerBatch, type AnswerSpec, type FaultEvent } from './frames';

export const HEADER_SIZE = 8;
export const HELLO_SIZE = 24;
export const RESULT_SIZE = 16;
/** The bytes "DXMP" in stream order, read as a little-endian u32. */
export const WIRE_MAGIC = 0x504d5844;
export const WIRE_VERSION = 1;
/** Largest body either side accepts. */
export const MAX_BODY = 16 * 1024 * 1024;

export const Msg = {
  /** client → daemon: N × 32-byte FaultEvent */
  Events: 1,
  /** daemon → client: Answer frames (48 bytes + payload padded to 8) */
  Answers: 2,
  /** client → daemon: one 16-byte result per answer of one ANSWERS message, in order */
  Results: 3,
  /** first message each way */
  Hello: 4,
  /** empty: the sender is going away */
  Bye: 5,
} as const;
export type MsgType = (typeof Msg)[keyof typeof Msg];

const NAMES: Record<number, string> = { 1: 'EVENTS', 2: 'ANSWERS', 3: 'RESULTS', 4: 'HELLO', 5: 'BYE' };

export function messageName(type: number): string {
  return NAMES[type] ?? `type ${type}`;
}

export interface Hello {
  pid: number;
  /** the client's token; the daemon echoes the client's */
  session: bigint;
  version: number;
}

export interface WireResult {
  /** the answer's tag */
  tag: number;
  /** 0, RESULT_RACED, or -errno */
  result: number;
}

export interface WireMessage {
  type: MsgType;
  body: Buffer;
}

function protoError(message: string): Error {
  return daxError('EPROTO', message);
}

/** Header + body, one message. */
export function encodeMessage(type: MsgType, body?: Uint8Array): Buffer {
  const len = body ? body.length : 0;
  if (len > MAX_BODY) throw daxError('EMSGSIZE', `${messageName(type)} body of ${len} bytes exceeds ${MAX_BODY}`);
  const b = Buffer.allocUnsafe(HEADER_SIZE + len);
  b.writeUInt16LE(type, 0);
  b.writeUInt16LE(0, 2);
  b.writeUInt32LE(len, 4);
  if (body) b.set(body, HEADER_SIZE);
  return b;
}

export function encodeHello(pid: number, session: bigint): Buffer {
  checkU64('session', session);
  const body = Buffer.alloc(HELLO_SIZE);
  body.writeUInt32LE(WIRE_MAGIC, 0);
  body.writeUInt32LE(WIRE_VERSION, 4);
  body.writeUInt32LE(pid >>> 0, 8);
  body.writeUInt32LE(0, 12);
  body.writeBigUInt64LE(session, 16);
  return encodeMessage(Msg.Hello, body);
}

/** Decodes and checks a HELLO body (magic and version); throws EPROTO. */
export function decodeHello(body: Buffer): Hello {
  if (body.length !== HELLO_SIZE) throw protoError(`HELLO body of ${body.length} bytes (expected ${HELLO_SIZE})`);
  const magic = body.readUInt32LE(0);
  if (magic !== WIRE_MAGIC) throw protoError(`bad HELLO magic 0x${magic.toString(16).padStart(8, '0')}`);
  const version = body.readUInt32LE(4);
  if (version !== WIRE_VERSION) throw protoError(`peer speaks protocol version ${version}, we speak ${WIRE_VERSION}`);
  return { pid: body.readUInt32LE(8), session: body.readBigUInt64LE(16), version };
}

export function encodeBye(): Buffer {
  return encodeMessage(Msg.Bye);
}

/** An EVENTS message (the client side; native code sends these, tests fake them). */
export function encodeEvents(events: readonly FaultEvent[]): Buffer {
  const body = Buffer.alloc(events.length * EVENT_SIZE);
  events.forEach((e, i) => encodeEvent(body, i * EVENT_SIZE, e));
  return encodeMessage(Msg.Events, body);
}

export function decodeEventsBody(body: Buffer): FaultEvent[] {
  if (body.length % EVENT_SIZE !== 0) throw protoError(`EVENTS body of ${body.length} bytes is not a multiple of ${EVENT_SIZE}`);
  return decodeEvents(body, body.length / EVENT_SIZE);
}

/** An ANSWERS message carrying the batch's frames (tags as given to AnswerBatch.add). */
export function encodeAnswers(batch: AnswerBatch): Buffer {
  return encodeMessage(Msg.Answers, batch.bytes());
}

export type WireAnswer = AnswerSpec & { payloadLength: number };

/** Splits an ANSWERS body into its frames (payloads as views); throws EPROTO on bad framing. */
export function decodeAnswersBody(body: Buffer): WireAnswer[] {
  const out: WireAnswer[] = [];
  let pos = 0;
  while (pos < body.length) {
    if (body.length - pos < ANSWER_SIZE) throw protoError(`ANSWERS body ends inside answer frame ${out.length}`);
    const a = decodeAnswer(body, pos);
    pos += ANSWER_SIZE;
    const padded = (a.payloadLength + 7) & ~7;
    if (padded > body.length - pos) throw protoError(`the payload of answer ${out.length} runs past its message`);
    if (a.payloadLength > 0) a.payload = body.subarray(pos, pos + a.payloadLength);
    pos += padded;
    out.push(a);
  }
  return out;
}

export function encodeResults(results: readonly WireResult[]): Buffer {
  const body = Buffer.alloc(results.length * RESULT_SIZE);
  results.forEach((r, i) => {
    const at = i * RESULT_SIZE;
    writeU64(body, at, r.tag);
    body.writeInt32LE(r.result, at + 8);
  });
  return encodeMessage(Msg.Results, body);
}

export function decodeResultsBody(body: Buffer): WireResult[] {
  if (body.length % RESULT_SIZE !== 0) throw protoError(`RESULTS body of ${body.length} bytes is not a multiple of ${RESULT_SIZE}`);
  const out = new Array<WireResult>(body.length / RESULT_SIZE);
  for (let i = 0; i < out.length; i++) {
    const at = i * RESULT_SIZE;
    out[i] = { tag: readU64(body, at), result: body.readInt32LE(at + 8) };
  }
  return out;
}

const FROM_CLIENT: readonly MsgType[] = [Msg.Hello, Msg.Events, Msg.Results, Msg.Bye];
const FROM_DAEMON: readonly MsgType[] = [Msg.Hello, Msg.Answers, Msg.Bye];

/**
 * Reassembles messages from a byte stream (lib/util/frame-reader.ts) and checks every
 * header as soon as it is complete (flags, size limit, direction, HELLO first, fixed
 * sizes), before waiting for the body. After it has thrown (EPROTO, EMSGSIZE) the
 * stream is unusable: drop the connection.
 */
export class MessageReader {
  private helloSeen = false;
  private readonly accept: readonly MsgType[];
  private readonly reader: FrameReader<WireMessage>;

  /** from: who sends the stream being read. */
  constructor(readonly from: 'client' | 'daemon', private readonly maxBody = MAX_BODY) {
    this.accept = from === 'client' ? FROM_CLIENT : FROM_DAEMON;
    this.reader = new FrameReader<WireMessage>({
      name: 'fault stream',
      headerSize: HEADER_SIZE,
      frameLength: (h) => {
        const type = h.readUInt16LE(0) as MsgType;
        const len = h.readUInt32LE(4);
        this.check(type, h.readUInt16LE(2), len);
        if (type === Msg.Hello) this.helloSeen = true;
        return HEADER_SIZE + len;
      },
      decode: (frame) => ({ type: frame.readUInt16LE(0) as MsgType, body: frame.subarray(HEADER_SIZE) }),
    });
  }

  /** Bytes of an incomplete message held back. */
  get pending(): number {
    return this.reader.pending;
  }

  /** The complete messages the chunk finishes; bodies are views that stay valid. */
  push(chunk: Buffer): WireMessage[] {
    return this.reader.push(chunk);
  }

  private check(type: MsgType, flags: number, len: number): void {
    const name = messageName(type);
    if (flags !== 0) throw protoError(`${name} message with flags ${flags} (none are defined in version ${WIRE_VERSION})`);
    if (len > this.maxBody) throw daxError('EMSGSIZE', `${name} message of ${len} bytes exceeds the limit of ${this.maxBody}`);
    if (NAMES[type] === undefined) throw protoError(`unknown message type ${type}`);
    if (!this.accept.includes(type)) throw protoError(`${name} messages are not sent by the ${this.from}`);
    if (!this.helloSeen && type !== Msg.Hello) throw protoError(`expected HELLO first, got ${name}`);
    if (this.helloSeen && type === Msg.Hello) throw protoError('a second HELLO');
    const bad =
      (type === Msg.Hello && len !== HELLO_SIZE) ||
      (type === Msg.Bye && len !== 0) ||
      (type === Msg.Events && len % EVENT_SIZE !== 0) ||
      (type === Msg.Results && len % RESULT_SIZE !== 0) ||
      (type === Msg.Answers && len % 8 !== 0);
    if (bad) throw protoError(`${name} body of ${len} bytes has the wrong size`);
  }
}
