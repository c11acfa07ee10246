// The one stream reader under both socket protocols: it reassembles length-framed
// messages from the chunks of a byte stream (the daxmapd control connection,
// lib/protocol/control.ts, and the fault wire, lib/native/wire.ts). Each header is
// checked as soon as it is complete, before waiting for its body, so an oversized
// length is refused without reading it. Whatever the protocol throws fails the
// stream for good: the connection must then be dropped.
import { daxError } from '../errors';

export interface FrameFormat<T> {
  /** The stream, for the error of a push after a failure ("the <name> already failed"). */
  name: string;
  headerSize: number;
  /** Bytes the stream must start with, once (a magic), and the error when it does not. */
  preamble?: { bytes: Buffer; mismatch: () => Error };
  /** Checks a complete header (a view of `headerSize` bytes); returns the frame's whole length, header included. */
  frameLength(header: Buffer): number;
  /** What push() returns for a complete frame (a view of exactly its bytes, header included, that stays valid). */
  decode(frame: Buffer): T;
}

export class FrameReader<T> {
  private chunks: Buffer[] = [];
  private total = 0;
  /** Length of the frame whose header has been checked; 0: none yet. */
  private need = 0;
  private preambleSeen: boolean;
  private failed = false;

  constructor(private readonly format: FrameFormat<T>) {
    this.preambleSeen = format.preamble === undefined;
  }

  /** Bytes of an incomplete frame held back. */
  get pending(): number {
    return this.total;
  }

  /** The complete frames this chunk finishes. Throws (and stays failed) on anything the format refuses. */
  push(chunk: Buffer): T[] {
    if (this.failed) throw daxError('EPROTO', `the ${this.format.name} already failed`);
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.total += chunk.length;
    }
    const out: T[] = [];
    try {
      if (!this.preambleSeen) {
        const p = this.format.preamble!;
        if (this.total < p.bytes.length) return out;
        const b = this.flatten();
        if (!b.subarray(0, p.bytes.length).equals(p.bytes)) throw p.mismatch();
        this.preambleSeen = true;
        this.keep(b.subarray(p.bytes.length));
      }
      for (;;) {
        if (this.need === 0) {
          if (this.total < this.format.headerSize) break;
          this.need = this.format.frameLength(this.flatten().subarray(0, this.format.headerSize));
        }
        // A large frame arrives in many chunks: they are joined once, when it is complete.
        if (this.total < this.need) break;
        const b = this.flatten();
        const frame = b.subarray(0, this.need);
        this.need = 0;
        this.keep(b.subarray(frame.length));
        out.push(this.format.decode(frame));
      }
    } catch (err) {
      this.failed = true;
      throw err;
    }
    return out;
  }

  private keep(rest: Buffer): void {
    this.chunks = rest.length > 0 ? [rest] : [];
    this.total = rest.length;
  }

  private flatten(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.total)];
    return this.chunks[0]!;
  }
}
