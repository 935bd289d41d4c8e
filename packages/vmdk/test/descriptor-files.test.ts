import { metadataRangesOf } from '@ic/conformance';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, statSync } from 'node:fs';
import { qemuCreate, qemuInfo, requireQemu, tempDir } from '@ic/test-utils';
import { vmdkDriver } from '../src/index.js';
import { closeAll, errorCode, mapOf, openVmdk } from './helpers.js';

const tmp = tempDir('ic-vmdk-desc-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

/** qemu's format-specific data without what only the extent files can tell (cluster-size of sparse extents). */
function withoutExtentClusterSize(data: Record<string, unknown>): Record<string, unknown> {
  const extents = (data.extents as Record<string, unknown>[]).map(({ 'cluster-size': _dropped, ...rest }) => rest);
  return { ...data, extents };
}

describe('standalone descriptor files', () => {
  it('monolithicFlat: probe 60, info like qemu, map/read refused, conversion blocked', async () => {
    const file = tmp.path('mf.vmdk');
    qemuCreate(file, 'vmdk', '100M', { o: 'subformat=monolithicFlat' });
    const head = new Uint8Array(readFileSync(file));
    expect(vmdkDriver.probe(head, head.length)).toBe(60);
    const image = await openVmdk(file);
    const info = image.info();
    const q = qemuInfo(file, 'vmdk');
    expect(info.virtualSize).toBe(q['virtual-size']);
    expect(info.clusterSize).toBe(q['cluster-size']); // both undefined: flat extents have no grains
    expect(info.formatSpecific).toEqual(q['format-specific']);
    expect(await errorCode(() => mapOf(image))).toBe('UNSUPPORTED');
    expect(await errorCode(() => image.read(0, 512))).toBe('UNSUPPORTED');
    const source = await image.conversionSource!();
    expect(source.blockers[0]!.reason).toBe(
      'this VMDK keeps its data in other files (createType monolithicFlat); in-place conversion works on single-file images only',
    );
    expect(await metadataRangesOf(source)).toEqual([{ offset: 0, length: statSync(file).size, kind: 'header', role: 'descriptor file' }]);
    try {
      await mapOf(image);
    } catch (error) {
      expect((error as Error).message).toContain('"mf-flat.vmdk"');
    }
  });

  it('twoGbMaxExtentSparse: three extents, like qemu but without the extents\' own grain sizes', async () => {
    const file = tmp.path('ts.vmdk');
    qemuCreate(file, 'vmdk', '5G', { o: 'subformat=twoGbMaxExtentSparse' });
    const image = await openVmdk(file);
    const info = image.info();
    const q = qemuInfo(file, 'vmdk');
    expect(info.virtualSize).toBe(5 * 1024 ** 3);
    expect(info.virtualSize).toBe(q['virtual-size']);
    expect(info.formatSpecific!.data).toEqual(withoutExtentClusterSize(q['format-specific']!.data));
    expect(q['cluster-size']).toBe(65536);
    expect(info.clusterSize).toBeUndefined(); // known only from the extent files, which ic does not open
    expect((info.formatSpecific!.data.extents as unknown[]).length).toBe(3);
  });

  it('untrusted mode refuses a descriptor that names files', async () => {
    const file = tmp.path('mf.vmdk');
    expect(await errorCode(() => openVmdk(file, { untrusted: true }))).toBe('EXTERNAL_REF');
  });

  it('absolute paths are shown as they are, relative ones next to the descriptor', async () => {
    const file = tmp.path('mf.vmdk');
    const image = await openVmdk(file);
    const extents = image.info().formatSpecific!.data.extents as { filename: string }[];
    expect(extents[0]!.filename).toBe(tmp.path('mf-flat.vmdk'));
    expect(qemuInfo(file, 'vmdk')['format-specific']!.data.extents).toEqual([expect.objectContaining({ filename: tmp.path('mf-flat.vmdk') })]);
  });
});
