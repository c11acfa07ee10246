// The map model test (map-model-suite.ts) with the default window budget. The run
// with a small budget is map-model-budget.test.ts: a file of its own, so that each
// has tap's whole timeout and the two can run side by side.
import t from 'tap';
import { mapModelSuite } from './map-model-suite';

mapModelSuite(t);
