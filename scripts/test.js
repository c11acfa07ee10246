#!/usr/bin/env node
// `npm test`: runs tap (arguments passed through), then, if anything failed, prints
// every failure again at the very end of the output.
//
// A run prints thousands of lines and the coverage table last; a reader who sees
// only the end of the output (a CI log cut to its tail) would see "fail: 1" and not
// which test. tap keeps each file's TAP stream in .tap/test-results/; this reads
// those streams back and prints, for each failing file, the path of every failing
// assertion (the nested subtest names) with its diagnostics, and the end of the
// stream for a file that failed without a failing assertion (a crash, a timeout).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const RESULTS = path.join(ROOT, '.tap', 'test-results');
const TAP = path.join(ROOT, 'node_modules', '.bin', 'tap');

// Lines of diagnostics kept per failing assertion, and of a stream's end.
const DIAG_LINES = 40;
const TAIL_LINES = 30;

function walk(dir, out) {
  let entries;
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (e.name.endsWith('.tap')) out.push(p);
  }
  return out;
}

// The failures in one TAP stream: for each `not ok` that is a leaf (an assertion, or
// a subtest that failed without a failing child, e.g. one that timed out), its
// subtest path and its YAML block. Indentation is four spaces per level.
function failures(text) {
  const lines = text.split('\n');
  const names = []; // names[level] = the subtest being read at that level
  const failedChild = new Set(); // levels below which a failure was already reported
  const out = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const indent = line.length - line.trimStart().length;
    const level = Math.floor(indent / 4);
    const body = line.trimStart();
    const sub = /^# Subtest: (.*)$/.exec(body);
    if (sub) {
      names[level] = sub[1];
      names.length = level + 1;
      failedChild.delete(level + 1);
      continue;
    }
    const m = /^not ok \d+ - (.*?)(?: # (?:time=.*|SKIP.*|TODO.*))?$/.exec(body);
    if (!m) continue;
    // A subtest's own `not ok` closes it; if one of its children was reported, the
    // parent's line adds nothing.
    const isParent = failedChild.has(level + 1);
    failedChild.delete(level + 1);
    failedChild.add(level);
    if (isParent) continue;
    const where = [...names.slice(0, level), m[1]].filter(Boolean).join(' > ');
    const diag = [];
    if (lines[i + 1]?.trim() === '---') {
      for (let j = i + 2; j < lines.length && lines[j].trim() !== '...'; j++) diag.push(lines[j].slice(indent));
    }
    out.push({ where, diag });
  }
  return out;
}

const started = Date.now();
const r = spawnSync(fs.existsSync(TAP) ? TAP : 'tap', process.argv.slice(2), { stdio: 'inherit', cwd: ROOT });
if (r.error) {
  console.error(`test: cannot run tap: ${r.error.message}`);
  process.exit(2);
}
const code = r.status ?? 1;
if (code !== 0) {
  const report = [];
  // Streams this run wrote: the directory keeps those of earlier runs of other files.
  for (const file of walk(RESULTS, []).filter((f) => fs.statSync(f).mtimeMs >= started - 1000)) {
    const text = fs.readFileSync(file, 'utf8');
    const name = path.relative(RESULTS, file).replace(/\.tap$/, '');
    const found = failures(text);
    if (found.length === 0 && !/^1\.\.\d+/m.test(text.split('\n').slice(-5).join('\n'))) {
      // Ended without a plan: killed, timed out or crashed before tap could say.
      report.push(`--- ${name}: ended without a plan; its last lines:`);
      report.push(...text.trimEnd().split('\n').slice(-TAIL_LINES));
      continue;
    }
    for (const f of found) {
      report.push(`--- ${name}: not ok: ${f.where}`);
      report.push(...f.diag.slice(0, DIAG_LINES));
      if (f.diag.length > DIAG_LINES) report.push(`  (${f.diag.length - DIAG_LINES} more lines in ${path.relative(ROOT, file)})`);
    }
  }
  console.log(`\n=== failures (tap exited with ${r.signal ?? code}), from .tap/test-results:`);
  console.log(report.length ? report.join('\n') : '(none found in .tap/test-results: see the output above)');
}
process.exit(code);
