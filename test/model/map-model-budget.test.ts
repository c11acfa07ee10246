// The map model test (map-model-suite.ts) with a window budget of 16 windows
// (DAXMAP_MODEL_BUDGET overrides it), so that installed windows are evicted all the
// time: the first half of the seeds (the second is map-model-budget-2.test.ts, a file
// of its own so that each has tap's whole timeout on a loaded machine).
import t from 'tap';
import { mapModelSuite, smallBudget } from './map-model-suite';

mapModelSuite(t, smallBudget, [0, 2]);
