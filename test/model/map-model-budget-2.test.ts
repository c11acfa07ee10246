// The map model test with a small window budget: the second half of the seeds
// (map-model-budget.test.ts runs the first).
import t from 'tap';
import { mapModelSuite, smallBudget } from './map-model-suite';

mapModelSuite(t, smallBudget, [1, 2]);
