/**
 * The in-place matrix, generated from the registry: every ordered pair of drivers where the first can be an
 * in-place source (and can build sample images) and the second an in-place target, over every conformance
 * shape and two cluster sizes. Adding a driver to the registry grows this suite with no edit here.
 */
import { describe, expect, it } from 'vitest';
import { collectExtents, convertInPlace, hasCapability, isIcError, type Driver } from '@ic/core';
import { buildShape, expectImageContent, shapes } from '@ic/conformance';
import { registry } from '../src/registry.js';

const sources = registry.list().filter((d) => hasCapability(d, 'inPlaceSource') && hasCapability(d, 'inPlaceTarget'));
const targets = registry.list().filter((d) => hasCapability(d, 'inPlaceTarget'));
const clusterSizes = [4096, 65536];

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
            const underHeader = sourceMap
              .filter((e) => e.kind === 'data')
              .reduce((sum, e) => {
                const hostOffset = (e as { hostOffset: number }).hostOffset;
                return sum + Math.max(0, Math.ceil((Math.min(headerRegion, hostOffset + e.length) - hostOffset) / clusterSize));
              }, 0);
            expect(forward.clustersRelocated).toBe(underHeader);
            const head = await io.read(0, 65536);
            expect(registry.probeBytes(head, await io.size())[0]?.driver).toBe(target);
            await expectImageContent(target, io, content, `${target.name} after the conversion`);
            const converted = await target.open(io);
            if (converted.check) expect((await converted.check()).corruptions).toBe(0);
            expect(converted.info().backing?.name).toBe(content.backing?.name);

            const back = await convertInPlace({ io, source: target, target: source, openOptions });
            expect(back.verified).toBe(true);
            expect(back.clustersRelocated).toBe(0);
            await expectImageContent(source, io, content, `${source.name} after the round trip`);
            const roundTrip = await source.open(io);
            if (roundTrip.check) expect((await roundTrip.check()).corruptions).toBe(0);
          });
        }
      }
    });
  }
}
