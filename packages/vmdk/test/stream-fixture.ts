import { deflateSync } from 'node:zlib';
import {
  COMPRESSION_DEFLATE,
  FLAG_COMPRESSED,
  FLAG_MARKERS,
  FLAG_NEWLINE_DETECT,
  formatDescriptor,
  MARKER_END_OF_STREAM,
  MARKER_FOOTER,
  MARKER_GRAIN_DIRECTORY,
  MARKER_GRAIN_TABLE,
  NEWLINE_CHECK_BYTES,
  serializeSparseHeader,
  type SparseHeader,
} from '../src/index.js';

/**
 * A streamOptimized file the way VMware writes a stream: header with gdOffset = GD_AT_END, descriptor, then
 * compressed grains, each grain table behind a GT marker, the GD behind a GD marker, the footer (a header copy
 * with the real gdOffset) behind a footer marker, and the end-of-stream marker. qemu-img can read such files but
 * cannot make them.
 */
export function streamWithFooter(virtualSize: number, grains: { guestOffset: number; data: Uint8Array }[], cid = 0x1234abcd): Uint8Array {
  const grainSectors = 128;
  const grainBytes = grainSectors * 512;
  const capacity = virtualSize / 512;
  const gtCount = Math.ceil(capacity / grainSectors / 512);
  const sectors: Uint8Array[] = [];
  const at = () => sectors.reduce((sum, part) => sum + part.length, 0) / 512;
  const pad = (bytes: Uint8Array) => {
    const out = new Uint8Array(Math.ceil(bytes.length / 512) * 512);
    out.set(bytes);
    return out;
  };
  const header: SparseHeader = {
    version: 3,
    flags: FLAG_NEWLINE_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
    capacity,
    grainSize: grainSectors,
    descriptorOffset: 1,
    descriptorSize: 20,
    numGTEsPerGT: 512,
    rgdOffset: 0,
    gdOffset: undefined,
    overHead: 128,
    uncleanShutdown: 0,
    newlineCheck: NEWLINE_CHECK_BYTES,
    compressAlgorithm: COMPRESSION_DEFLATE,
  };
  sectors.push(serializeSparseHeader(header));
  const descriptor = formatDescriptor({
    cid,
    parentCid: 0xffffffff,
    createType: 'streamOptimized',
    extents: [`RW ${capacity} SPARSE "stream.vmdk"`],
    virtualHWVersion: '4',
    virtualSize,
    adapterType: 'lsilogic',
    toolsVersion: '2147483647',
  });
  const descriptorArea = new Uint8Array(20 * 512);
  descriptorArea.set(new TextEncoder().encode(descriptor));
  sectors.push(descriptorArea);
  sectors.push(new Uint8Array((128 - at()) * 512)); // up to overHead
  const gtes = new Uint32Array(gtCount * 512);
  for (const grain of [...grains].sort((a, b) => a.guestOffset - b.guestOffset)) {
    const compressed = deflateSync(grain.data);
    const marker = new Uint8Array(12 + compressed.length);
    const view = new DataView(marker.buffer);
    view.setBigUint64(0, BigInt(grain.guestOffset / 512), true);
    view.setUint32(8, compressed.length, true);
    marker.set(compressed, 12);
    gtes[grain.guestOffset / grainBytes] = at();
    sectors.push(pad(marker));
  }
  const metadataMarker = (numSectors: number, type: number) => {
    const marker = new Uint8Array(512);
    const view = new DataView(marker.buffer);
    view.setBigUint64(0, BigInt(numSectors), true);
    view.setUint32(12, type, true);
    return marker;
  };
  const gd = new Uint32Array(gtCount);
  for (let t = 0; t < gtCount; t++) {
    sectors.push(metadataMarker(4, MARKER_GRAIN_TABLE));
    gd[t] = at();
    const table = new Uint8Array(2048);
    const view = new DataView(table.buffer);
    for (let i = 0; i < 512; i++) view.setUint32(i * 4, gtes[t * 512 + i]!, true);
    sectors.push(table);
  }
  const gdBytes = pad(new Uint8Array(gtCount * 4));
  new Uint32Array(gd).forEach((value, i) => new DataView(gdBytes.buffer).setUint32(i * 4, value, true));
  sectors.push(metadataMarker(gdBytes.length / 512, MARKER_GRAIN_DIRECTORY));
  const gdSector = at();
  sectors.push(gdBytes);
  sectors.push(metadataMarker(1, MARKER_FOOTER));
  sectors.push(serializeSparseHeader({ ...header, gdOffset: gdSector }));
  sectors.push(metadataMarker(0, MARKER_END_OF_STREAM));
  const out = new Uint8Array(at() * 512);
  let offset = 0;
  for (const part of sectors) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
