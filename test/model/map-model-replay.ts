// Replays a run of the mapping model test and, with --reduce, shrinks a failing run to
// a small sequence of operations that still fails the same way (delta debugging over
// the operations, then smaller lengths). Not a test; run it by hand:
//
//   npx tsc -p . && node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs \
//     test/model/map-model-replay.ts --seed 1 --ops 300 [--backing tmpfs|disk] [--reduce]
//   ... --script ops.json [--reduce]      (a JSON array of operations, e.g. printed by --reduce)
//
// Each attempt runs on a fresh pool. Options (the run to reduce must be generated the
// same way): --weights '{"unmap":0}', --budget N (window budget: eviction pressure).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

process.env.DAXMAP_LOCKDEP = '1';

import { Pool } from '../../dist/client/pool';
import { runMapModel, fmtOp, ModelMismatch, type MapOp, type Kind } from './map-model-core';

const { values: a } = parseArgs({
  options: {
    seed: { type: 'string', default: '1' },
    ops: { type: 'string', default: '300' },
    backing: { type: 'string', default: 'tmpfs' },
    script: { type: 'string' },
    reduce: { type: 'boolean', default: false },
    weights: { type: 'string' },
    budget: { type: 'string' },
  },
});
const seed = Number(a.seed);
const windowBudget = a.budget !== undefined ? Number(a.budget) : undefined;
const weights = a.weights ? (JSON.parse(a.weights) as Partial<Record<Kind, number>>) : undefined;
let k = 0;

interface Outcome { failed: boolean; sig: string; message: string; log: string[]; trace: MapOp[] }

/** The kind of failure, without offsets or op numbers: what reduction must preserve. */
function signature(msg: string): string {
  const m = /after op \d+: ([^:]*)(: ([a-z .]*))?/i.exec(msg);
  return m ? `${m[1]}: ${m[3] ?? ''}`.trim() : msg.slice(0, 40);
}

async function attempt(script: MapOp[] | undefined, ops: number): Promise<Outcome> {
  const dir = a.backing === 'disk' ? os.tmpdir() : '/dev/shm';
  const p = path.join(dir, `daxmap-map-replay-${process.pid}-${k++}.pool`);
  const pool = await Pool.create(p, { size: 64 << 20 });
  const log: string[] = [];
  const trace: MapOp[] = [];
  try {
    await runMapModel({
      pool, seed, ops, log, trace,
      ...(script ? { script } : {}), ...(weights ? { weights } : {}), ...(windowBudget !== undefined ? { windowBudget } : {}),
    });
    const v = await pool.request<unknown[]>('lockdep');
    if (v.length) return { failed: true, sig: 'lockdep', message: JSON.stringify(v), log, trace };
    return { failed: false, sig: '', message: '', log, trace };
  } catch (e) {
    if (!(e instanceof ModelMismatch)) throw e;
    return { failed: true, sig: signature(e.message), message: e.message, log, trace };
  } finally {
    await pool.close();
    fs.rmSync(p, { force: true });
  }
}

async function main(): Promise<void> {
  const script = a.script ? (JSON.parse(fs.readFileSync(a.script, 'utf8')) as MapOp[]) : undefined;
  const first = await attempt(script, Number(a.ops));
  if (!first.failed) {
    console.log(`passed: ${first.log.length} operations`);
    return;
  }
  console.log(`FAILED (${first.sig}):\n${first.message}\n--- last operations:\n${first.log.slice(-30).join('\n')}`);
  if (!a.reduce) return;
  // The failing operation is the last one executed; everything after is irrelevant.
  let cur: MapOp[] = [...first.trace];
  const fails = async (s: MapOp[]): Promise<boolean> => {
    const o = await attempt(s, s.length);
    return o.failed && o.sig === first.sig;
  };
  // ddmin over operations
  let chunk = Math.max(1, Math.floor(cur.length / 2));
  while (chunk >= 1) {
    let removed = false;
    for (let i = 0; i < cur.length;) {
      const cand = [...cur.slice(0, i), ...cur.slice(i + chunk)];
      if (cand.length > 0 && (await fails(cand))) {
        cur = cand;
        removed = true;
        process.stdout.write(`  ${cur.length} ops\n`);
      } else {
        i += chunk;
      }
    }
    if (!removed) chunk = Math.floor(chunk / 2);
  }
  // smaller lengths and rounder numbers, op by op
  for (let i = 0; i < cur.length; i++) {
    const op = cur[i]!;
    const tries: MapOp[] = [];
    if ('len' in op) {
      for (const len of [1, 16, 4096, Math.ceil(op.len / 2)]) if (len < op.len) tries.push({ ...op, len } as MapOp);
      if ('off' in op && op.off % 4096 !== 0) tries.push({ ...op, off: Math.floor(op.off / 4096) * 4096 } as MapOp);
    }
    if (op.k === 'truncate') for (const size of [4096, 8192, Math.round(op.size / 4096) * 4096]) if (size !== op.size) tries.push({ ...op, size });
    if (op.k === 'map' && (!op.faultAround || op.sync)) tries.push({ ...op, faultAround: true, sync: false });
    for (const cand of tries) {
      const s = [...cur.slice(0, i), cand, ...cur.slice(i + 1)];
      if (await fails(s)) { cur = s; break; }
    }
  }
  const last = await attempt(cur, cur.length);
  console.log(`\nREDUCED to ${cur.length} operations (${last.sig}):\n${cur.map((o, i) => fmtOp(i + 1, o)).join('\n')}\n${last.message}\n` +
    `JSON: ${JSON.stringify(cur)}`);
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
