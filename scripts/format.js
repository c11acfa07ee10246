#!/usr/bin/env node
// clang-format for the addon's sources (native/**/*.{cc,h}), with the style in
// .clang-format and the binary the clang-format npm package ships (no system
// install needed).
//
//   node scripts/format.js          check: list each file that is not formatted, exit 1 if any
//   node scripts/format.js --fix    rewrite those files in place
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { getNativeBinary } = require('clang-format');

const ROOT = path.resolve(__dirname, '..');

// Files left out of the check (none today): name them here, with the reason.
const EXCLUDED = new Set([]);

function sources(dir) {
  const out = [];
  for (const entry of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = `${dir}/${entry.name}`;
    if (entry.isDirectory()) out.push(...sources(rel));
    else if (/\.(cc|h)$/.test(entry.name) && !EXCLUDED.has(rel)) out.push(rel);
  }
  return out.sort();
}

const fix = process.argv.includes('--fix');
const files = sources('native');
const bin = getNativeBinary();
const args = fix ? ['-i', ...files] : ['--dry-run', '--Werror', ...files];
const r = spawnSync(bin, ['--style=file', ...args], { cwd: ROOT, encoding: 'utf8' });
if (r.error) throw r.error;
if (r.status !== 0) {
  // --dry-run prints one warning per changed line: name each file once.
  const bad = [...new Set([...r.stderr.matchAll(/^(\S+?):\d+:\d+: (?:error|warning)/gm)].map((m) => m[1]))];
  process.stderr.write(r.stderr.length < 4000 ? r.stderr : `${r.stderr.slice(0, 4000)}…\n`);
  console.error(`clang-format: ${bad.length} file(s) not formatted: ${bad.join(' ')}`);
  console.error('run `npm run format` to format them');
  process.exit(1);
}
console.log(`clang-format: ${files.length} file(s) ${fix ? 'formatted' : 'checked'}`);
