/**
 * The in-place matrix over ic's bundled drivers, from the kit (@ic/conformance's describeMatrix): every ordered
 * pair of drivers that can build and convert images, over every conformance shape and two cluster sizes, with
 * qemu writing to each result and judging it. Adding a driver to the registry grows this suite with no edit here.
 * 1 MiB is there for the targets whose blocks start at 1 MiB (a pair runs the sizes both of its drivers support).
 */
import { describeMatrix } from '@ic/conformance';
import { registry } from '../src/registry.js';

describeMatrix(registry.list(), { clusterSizes: [4096, 65536, 1024 * 1024] });
