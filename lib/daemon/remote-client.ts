// A client process as the fault policy sees it: answers for its regions travel as
// ANSWERS messages over its fault connection (docs/wire.md) and come back as
// RESULTS, matched by tag. A client that is gone answers -ENXIO for everything: its
// regions went with it.
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { AnswerBatch, type AnswerSpec, type FaultEvent } from '../native/frames';
import { Msg, MessageReader, decodeEventsBody, decodeHello, decodeResultsBody, encodeAnswers, encodeBye, encodeHello } from '../native/wire';
import type { Client } from '../fault/policy';
import { WindowBudget } from '../fault/budget';
import { native } from '../native/addon';
import { daxError } from '../errors';

const ENXIO = -6;

export class RemoteClient implements Client {
  readonly budget = new WindowBudget();
  deviceId = 0;
  readonly untrusted = true;
  private sock: Socket | null = null;
  private readonly pending = new Map<number, (r: number) => void>();
  private nextTag = 1;
  private dead = false;
  onEvents: ((client: RemoteClient, events: FaultEvent[]) => void) | null = null;
  onGone: ((client: RemoteClient, why: string) => void) | null = null;

  /**
   * A pidfd of the client's process, opened when it connected: its staging memfd is
   * taken through it (stageFrom), so never from another process that reused its pid.
   */
  private pidfd = -1;
  stageFrom: ((fd: number, length: number) => number) | null = null;

  constructor(readonly id: string, readonly session: bigint, readonly pid: number, private readonly log: Logger,
    /** An answer not acknowledged within this long counts the client as gone. */
    private readonly answerTimeoutMs = 15000) {
    // Test seam (with DAXMAP_TEST_HOOKS=1): a daemon that may not take its clients' memfds.
    const deny = process.env.DAXMAP_TEST_HOOKS === '1' && process.env.DAXMAP_TEST_STAGE_DENY === '1';
    try {
      this.pidfd = native().pidfdOpen(pid);
      this.stageFrom = (fd, length) => {
        if (this.pidfd < 0) throw daxError('ENXIO', 'the client is gone');
        if (deny) throw daxError('EPERM', 'stage: pidfd_getfd: Operation not permitted (DAXMAP_TEST_STAGE_DENY)');
        return native().stageAdopt(this.pidfd, fd, length);
      };
    } catch (err) {
      log.debug({ err, clientPid: pid }, 'no pidfd for the client: its mappings are not staged');
    }
  }

  get connected(): boolean {
    return this.sock !== null && !this.dead;
  }

  get gone(): boolean {
    return this.dead;
  }

  /** The client's fault connection, after its HELLO was read. */
  attach(sock: Socket, reader: MessageReader, leftover: { type: number; body: Buffer }[]): void {
    if (this.dead) {
      sock.destroy();
      return;
    }
    this.sock = sock;
    sock.write(encodeHello(process.pid, this.session));
    const handle = (m: { type: number; body: Buffer }): void => {
      if (m.type === Msg.Events) this.onEvents?.(this, decodeEventsBody(m.body));
      else if (m.type === Msg.Results) {
        for (const r of decodeResultsBody(m.body)) {
          const p = this.pending.get(r.tag);
          if (p) {
            this.pending.delete(r.tag);
            p(r.result);
          }
        }
      } else if (m.type === Msg.Bye) this.die('the client said goodbye');
      else if (m.type === Msg.Hello) this.die('a second HELLO');
    };
    for (const m of leftover) handle(m);
    sock.on('data', (chunk: Buffer) => {
      let msgs;
      try {
        msgs = reader.push(chunk);
      } catch (err) {
        this.die(`malformed fault traffic: ${(err as Error).message}`);
        return;
      }
      for (const m of msgs) handle(m);
    });
    sock.on('close', () => this.die('fault connection closed'));
    sock.on('error', () => {});
  }

  run(answers: AnswerSpec[]): Promise<number[]> | number[] {
    if (this.dead || this.sock === null) return answers.map(() => ENXIO);
    const batch = new AnswerBatch(answers.length);
    const tags: number[] = [];
    for (const a of answers) {
      const tag = this.nextTag++;
      tags.push(tag);
      batch.add({ ...a, tag });
    }
    const results = tags.map((tag) => new Promise<number>((resolve) => this.pending.set(tag, resolve)));
    this.sock.write(encodeAnswers(batch));
    const timer = setTimeout(() => {
      if (tags.some((t) => this.pending.has(t))) this.die(`no result for an answer within ${this.answerTimeoutMs} ms`);
    }, this.answerTimeoutMs);
    timer.unref();
    return Promise.all(results).finally(() => clearTimeout(timer));
  }

  /** The client is gone (or misbehaved): every pending answer resolves -ENXIO. */
  die(why: string): void {
    if (this.dead) return;
    this.dead = true;
    this.log.info({ client: this.id, clientPid: this.pid, why }, 'client fault connection ended');
    for (const p of this.pending.values()) p(ENXIO);
    this.pending.clear();
    if (this.pidfd >= 0) {
      // Memfds taken already stay this process's (what is staged there is still collected).
      native().stageClose(this.pidfd);
      this.pidfd = -1;
    }
    if (this.sock) {
      try {
        this.sock.end(encodeBye());
      } catch {
        // already gone
      }
      this.sock.destroySoon();
    }
    this.onGone?.(this, why);
  }
}

/** Read a fault connection's HELLO; resolves with its session and whatever followed it. */
export function readFaultHello(sock: Socket, first: Buffer, timeoutMs: number): Promise<{ session: bigint; pid: number; reader: MessageReader; rest: { type: number; body: Buffer }[] }> {
  return new Promise((resolve, reject) => {
    const reader = new MessageReader('client');
    const timer = setTimeout(() => fail(new Error('no HELLO in time')), timeoutMs);
    const fail = (err: Error): void => {
      clearTimeout(timer);
      sock.removeListener('data', onData);
      reject(err);
    };
    const onData = (chunk: Buffer): void => {
      let msgs;
      try {
        msgs = reader.push(chunk);
      } catch (err) {
        fail(err as Error);
        return;
      }
      if (msgs.length === 0) return;
      clearTimeout(timer);
      sock.removeListener('data', onData);
      const [hello, ...rest] = msgs;
      try {
        const h = decodeHello(hello!.body);
        resolve({ session: h.session, pid: h.pid, reader, rest });
      } catch (err) {
        reject(err as Error);
      }
    };
    sock.on('data', onData);
    onData(first);
  });
}
