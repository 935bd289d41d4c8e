/**
 * The in-place matrix, generated from the registry: every ordered pair of drivers where the first can be an
 * in-place source (and can build sample images) and the second an in-place target, over every conformance
 * shape and two cluster sizes. Adding a driver to the registry grows this suite with no edit here.
 */
import { describe, expect, it } from 'vitest';
import { collectExtents, convertInPlace, hasCapability, isIcError, type Driver, type Extent } from '@ic/core';
import { buildShape, expectImageContent, shapes } from '@ic/conformance';
import { registry } from '../src/registry.js';

const sources = registry.list().filter((d) => hasCapability(d, 'inPlaceSource') && hasCapability(d, 'inPlaceTarget'));
const targets = registry.list().filter((d) => hasCapability(d, 'inPlaceTarget'));
const clusterSizes = [4096, 65536];

/** Clusters of data that lie (partly) below `limit` in the file. */
function clustersBelow(map: readonly Extent[], limit: number, clusterSize: number): number {
  let count = 0;
  for (const extent of map) {
    if (extent.kind !== 'data') continue;
    for (let at = 0; at < extent.length; at += clusterSize) if (extent.hostOffset + at < limit) count++;
  }
  return count;
}

function supports(driver: Driver, clusterSize: number): boolean {
  const range = driver.inPlace?.clusterSizes;
  return range !== undefined && clusterSize >= range.min && clusterSize <= range.max;
}

it('the registry offers at least two in-place drivers', () => {
  expect(sources.length).toBeGreaterThanOrEqual(2);
});

for (const source of sources) {
  for (const target of targets) {
    if (source === target) continue;
    describe(`${source.name} -> ${target.name} -> ${source.name}`, () => {
      for (const clusterSize of clusterSizes.filter((size) => supports(source, size) && supports(target, size))) {
        for (const shape of shapes.filter((s) => !s.needsBacking || (hasCapability(source, 'backing') && hasCapability(target, 'backing')))) {
          it(`${shape.name}, ${clusterSize}-byte clusters`, async () => {
            const { io, content, backing } = await buildShape(source, shape, clusterSize);
            const openOptions = backing ? { backing } : {};
            const sourceMap = await collectExtents((await source.open(io)).map());
            const description = await (await source.open(io)).conversionSource!();
            const request = { source: description.options, clusterSize, options: {}, ...(backing ? { backingInfo: backing.info() } : {}) };
            const problems = target.inPlace!.create(request).problems;
            const pristine = io.snapshot();

            if (problems.length > 0) {
              // The target cannot represent this image: refused up front, and nothing written.
              const error = await convertInPlace({ io, source, target, openOptions }).catch((e: unknown) => e);
              expect(isIcError(error) && error.code, String(error)).toBe('UNSUPPORTED');
              expect(io.snapshot()).toEqual(pristine);
              return;
            }

            const forward = await convertInPlace({ io, source, target, openOptions });
            expect(forward.verified).toBe(true);
            expect(forward.targetClusterSize).toBe(clusterSize);
            // Only data clusters under the target's header region move.
            const headerRegion = target.inPlace!.create(request).layout.headerRegionSize;
            expect(forward.clustersRelocated).toBe(clustersBelow(sourceMap, headerRegion, clusterSize));
            const head = await io.read(0, 65536);
            expect(registry.probeBytes(head, await io.size())[0]?.driver).toBe(target);
            await expectImageContent(target, io, content, `${target.name} after the conversion`);
            const converted = await target.open(io);
            if (converted.check) expect((await converted.check()).corruptions).toBe(0);
            expect(converted.info().backing?.name).toBe(content.backing?.name);

            // Compaction may have moved data into holes below the source's header region; only those move back.
            const targetMap = await collectExtents((await target.open(io)).map());
            const sourceHeader = source.inPlace!.create({ ...request, source: (await (await target.open(io)).conversionSource!()).options }).layout.headerRegionSize;
            const back = await convertInPlace({ io, source: target, target: source, openOptions });
            expect(back.verified).toBe(true);
            expect(back.clustersRelocated).toBe(clustersBelow(targetMap, sourceHeader, clusterSize));
            await expectImageContent(source, io, content, `${source.name} after the round trip`);
            const roundTrip = await source.open(io);
            if (roundTrip.check) expect((await roundTrip.check()).corruptions).toBe(0);
          });
        }
      }
    });
  }
}
