// The layering of docs/architecture.md holds: no module imports a layer above its
// own, the client and the daemon do not import each other, and nothing above the
// pool reaches into its internals (test/arch/import-rules.ts).
import t from 'tap';
import path from 'node:path';
import { importGraph, libFiles, violations, layerOf } from './import-rules';

const LIB = path.resolve(__dirname, '../../lib');

t.test('lib/ keeps its layers', async (t) => {
  const edges = importGraph(LIB);
  t.ok(edges.length > 50, `the graph was read (${edges.length} imports)`);
  t.same(violations(edges, libFiles(LIB)), [], 'no import breaks the layering');
});

t.test('the checker catches each kind of break', async (t) => {
  const cases: [string, string, RegExp][] = [
    ['client/pool.ts', 'daemon/control.ts', /peers/],
    ['daemon/main.ts', 'cli/units.ts', /higher layer/],
    ['pool/core.ts', 'fault/policy.ts', /higher layer/],
    ['pool/core.ts', 'service/service.ts', /higher layer/],
    ['cli/main.ts', 'pool/core.ts', /pool internals/],
    ['cli/main.ts', 'pool/internal.ts', /pool internals/],
    ['service/service.ts', 'pool/core.ts', /pool internals/],
    ['native/engine.ts', 'device/device.ts', /higher layer/],
  ];
  for (const [from, to, re] of cases) {
    const v = violations([{ from, to }], []);
    t.equal(v.length, 1, `${from} → ${to} is refused`);
    t.match(v[0], re);
  }
  t.same(violations([{ from: 'cli/main.ts', to: 'pool/index.ts' }, { from: 'service/service.ts', to: 'pool/internal.ts' }, { from: 'client/pool.ts', to: 'service/protocol.ts' }], []), [], 'allowed edges pass');
  t.match(violations([], ['newroom/x.ts'])[0], /in no layer/, 'a module in no layer is reported');
  t.equal(layerOf('fault/policy.ts'), 'fault');
});
