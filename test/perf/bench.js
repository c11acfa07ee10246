#!/usr/bin/env node
// `npm run bench`: the perf tests of test/perf, one at a time, then summary.test.ts
// last, so that the run ends with the benchmark table (docs/bench.md). Arguments
// narrow the first part (`npm run bench -- test/perf/pool-ops.test.ts`; `--table-only`
// runs the table alone). Exit status: non-zero if any part failed.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const dir = __dirname;
const root = path.resolve(dir, '../..');
const tap = path.join(root, 'node_modules', '.bin', 'tap');
const args = ['--disable-coverage', '--reporter=tap', '--timeout=1800', '--jobs=1'];
const SUMMARY = path.join('test', 'perf', 'summary.test.ts');

const argv = process.argv.slice(2);
const tableOnly = argv.includes('--table-only');
const named = argv.filter((a) => a !== '--table-only');
const others = tableOnly ? [] : named.length > 0 ? named : fs.readdirSync(dir)
  .filter((f) => f.endsWith('.test.ts') && f !== 'summary.test.ts')
  .sort()
  .map((f) => path.join('test', 'perf', f));

const run = (files) => spawnSync(tap, [...args, ...files], { cwd: root, stdio: 'inherit' }).status ?? 1;
let status = 0;
if (others.length > 0) status = run(others);
const s = run([SUMMARY]);
process.exit(status || s);
