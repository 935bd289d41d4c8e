/**
 * The in-place matrix over ic's bundled drivers, from the kit (@ic/conformance's describeMatrix), part 1 of 3 of the
 * ordered pairs (split so the parts run in parallel): every pair of drivers that can build and convert images, over
 * every conformance shape and the cluster sizes both support of 4 KiB, 64 KiB and 1 MiB (1 MiB for the targets whose
 * blocks are 1 MiB), with qemu writing to each result and judging it; then each of those drivers to raw (the identity
 * target, through convertToIdentity as `ic convert-inplace IMAGE raw`) and back, a source the engine refuses for raw
 * reported skipped with the reason. Adding a driver to the registry grows this
 * suite with no edit here. IC_KIT_COVERAGE=covering (`npm test`'s default) runs each shape once per pair, at a
 * cluster size rotating with the shape; IC_KIT_COVERAGE=full runs every shape at every size.
 */
import { describeMatrix } from '@ic/conformance';
import { registry } from '../src/registry.js';

describeMatrix(registry.list(), { clusterSizes: [4096, 65536, 1024 * 1024], part: { index: 0, of: 3 } });
