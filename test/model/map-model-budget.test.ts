// The map model test (map-model-suite.ts) with a window budget of 16 windows
// (DAXMAP_MODEL_BUDGET overrides it), so that installed windows are evicted all
// the time.
import t from 'tap';
import { mapModelSuite, smallBudget } from './map-model-suite';

mapModelSuite(t, smallBudget);
