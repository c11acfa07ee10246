// Process-level facts and actions of the fault engine: is userfaultfd usable, the
// agent's counters and watchdog, and executing a batch of answers.
import { daxError } from '../errors';
import { native, type AgentStats, type UffdInfo } from './addon';
import type { AnswerBatch } from './frames';

/** Checks that userfaultfd opens with the features daxmap needs. Throws EUFFD (with the remedy) if not. */
export function probeUffd(): UffdInfo {
  return native().uffdProbe();
}

export function agentStats(): AgentStats {
  return native().agentStats();
}

/**
 * faultTimeoutMs: a fault still unanswered after this long is answered with SIGBUS
 * by the agent's watchdog (0 disables; default 30000). A safety net against a
 * stuck handler: no thread waits forever.
 */
export function configureAgent(options: { faultTimeoutMs?: number }): void {
  const t = options.faultTimeoutMs;
  if (t !== undefined && (!Number.isSafeInteger(t) || t < 0)) {
    throw daxError('EINVAL', `faultTimeoutMs must be a non-negative integer, got ${String(t)}`);
  }
  native().agentConfigure(options);
}

/** CLOCK_MONOTONIC in ns, the clock of FaultEvent.timeNs. */
export function monotonicNow(): bigint {
  return native().monotonicNow();
}

/**
 * With `enable`, a SIGBUS (a fault daxmap answered with SIGBUS: beyond EOF, or a
 * fault that could not be satisfied) prints "daxmap: SIGBUS at 0x<address>" to
 * stderr before the process dies of it. Also switched on by DAXMAP_SIGBUS_REPORT=1.
 */
export function reportSigbus(enable = true): void {
  native().sigbusReport(enable);
}

let results = new Int32Array(64);

/**
 * Executes the batch's answers on this thread, in order. Returns one result per
 * answer: 0, RESULT_RACED, or -errno. Never call it on a thread that may itself be
 * blocked in a fault it is answering (the service never touches trapped memory).
 */
export function execute(batch: AnswerBatch): Int32Array {
  if (results.length < batch.count) results = new Int32Array(Math.max(batch.count, results.length * 2));
  const n = native().execute(batch.bytes(), results);
  return results.subarray(0, n);
}
