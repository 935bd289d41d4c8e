/**
 * qemu-img's output shapes, reproduced: its human size strings, the `info` text and JSON, the `map` table
 * and JSON, the `check` text and JSON. Key orders follow what qemu-img 7.2 prints so that the JSON is
 * byte-comparable, not only equal as objects.
 */
import type { CheckReport, ImageInfo, QemuMapEntry } from '@ic/core/sdk';

const SIZE_SUFFIXES = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'] as const;

/** C's printf("%0.3g"): three significant digits, trailing zeros dropped. */
export function formatG3(value: number): string {
  if (value === 0) return '0';
  const text = value.toPrecision(3);
  const exponentAt = text.indexOf('e');
  const stripZeros = (digits: string) => (digits.includes('.') ? digits.replace(/0+$/, '').replace(/\.$/, '') : digits);
  if (exponentAt < 0) return stripZeros(text);
  const mantissa = stripZeros(text.slice(0, exponentAt));
  const exponent = Number(text.slice(exponentAt + 1));
  return `${mantissa}e${exponent < 0 ? '-' : '+'}${String(Math.abs(exponent)).padStart(2, '0')}`;
}

/** qemu's size_to_str(): "1.32 MiB", "260 KiB", "0 B" (switches unit once the integer part reaches 1000). */
export function sizeToString(value: number): string {
  const scaled = value / (1000 / 1024);
  let exponent = 0; // frexp(): scaled = m * 2^exponent with 0.5 <= m < 1
  while (exponent < 1100 && 2 ** exponent <= scaled) exponent++;
  const unit = Math.min(SIZE_SUFFIXES.length - 1, Math.max(0, Math.trunc((exponent - 1) / 10)));
  return `${formatG3(value / 2 ** (unit * 10))} ${SIZE_SUFFIXES[unit]}B`;
}

/** qemu's path_has_protocol(): "nbd://x", "json:{...}", "http:..." — a colon before any slash. */
export function hasProtocol(name: string): boolean {
  const colon = name.indexOf(':');
  if (colon < 0) return false;
  const slash = name.indexOf('/');
  return slash < 0 || colon < slash;
}

/**
 * qemu's bdrv_get_full_backing_filename(): absolute names and protocol names as they are, relative names
 * against the directory part of the image's own name (string arithmetic, no normalisation).
 */
export function fullBackingFilename(imageFilename: string, backingName: string): string | undefined {
  if (backingName === '' || hasProtocol(backingName) || backingName.startsWith('/')) return backingName;
  if (imageFilename === '' || imageFilename.startsWith('json:')) return undefined;
  const slash = imageFilename.lastIndexOf('/');
  return slash < 0 ? backingName : imageFilename.slice(0, slash + 1) + backingName;
}

/** The object `qemu-img info --output=json` prints, with its key order. */
export function infoJson(info: ImageInfo, filename: string, actualSize: number | undefined): Record<string, unknown> {
  const json: Record<string, unknown> = {};
  const backing = info.backing;
  if (backing?.format !== undefined) json['backing-filename-format'] = backing.format;
  json['virtual-size'] = info.virtualSize;
  json['filename'] = filename;
  if (info.clusterSize !== undefined) json['cluster-size'] = info.clusterSize;
  json['format'] = info.format;
  if (actualSize !== undefined) json['actual-size'] = actualSize;
  if (info.formatSpecific) json['format-specific'] = { type: info.formatSpecific.type, data: info.formatSpecific.data };
  if (backing) {
    const full = fullBackingFilename(filename, backing.name);
    if (full !== undefined) json['full-backing-filename'] = full;
    json['backing-filename'] = backing.name;
  }
  json['dirty-flag'] = info.dirty;
  return json;
}

/** qemu's JSON pretty printer: 4-space indentation, `"key": value`. */
export function qemuJson(value: unknown): string {
  return `${JSON.stringify(value, null, 4)}\n`;
}

function dumpValue(indentation: number, value: unknown, lines: string[]): void {
  if (Array.isArray(value)) {
    value.forEach((element, index) => {
      const composite = typeof element === 'object' && element !== null;
      if (composite) {
        lines.push(`${' '.repeat(indentation * 4)}[${index}]:\n`);
        dumpValue(indentation + 1, element, lines);
      } else {
        lines.push(`${' '.repeat(indentation * 4)}[${index}]: ${scalar(element)}\n`);
      }
    });
    return;
  }
  if (typeof value === 'object' && value !== null) {
    for (const [key, element] of Object.entries(value)) {
      const label = key.replace(/-/g, ' ');
      if (typeof element === 'object' && element !== null) {
        lines.push(`${' '.repeat(indentation * 4)}${label}:\n`);
        dumpValue(indentation + 1, element, lines);
      } else {
        lines.push(`${' '.repeat(indentation * 4)}${label}: ${scalar(element)}\n`);
      }
    }
    return;
  }
  lines.push(`${' '.repeat(indentation * 4)}${scalar(value)}\n`);
}

function scalar(value: unknown): string {
  return typeof value === 'string' ? value : String(value);
}

/** The text of `qemu-img info` (bdrv_image_info_dump). */
export function infoHuman(json: Record<string, unknown>): string {
  const lines: string[] = [];
  const actual = json['actual-size'];
  lines.push(`image: ${json['filename']}\n`);
  lines.push(`file format: ${json['format']}\n`);
  const virtualSize = json['virtual-size'] as number;
  lines.push(`virtual size: ${sizeToString(virtualSize)} (${virtualSize} bytes)\n`);
  lines.push(`disk size: ${typeof actual === 'number' ? sizeToString(actual) : 'unavailable'}\n`);
  if (json['cluster-size'] !== undefined) lines.push(`cluster_size: ${json['cluster-size']}\n`);
  if (json['dirty-flag'] === true) lines.push('cleanly shut down: no\n');
  const backingName = json['backing-filename'];
  if (typeof backingName === 'string') {
    const full = json['full-backing-filename'];
    let line = `backing file: ${backingName}`;
    if (full === undefined) line += ' (cannot determine actual path)';
    else if (full !== backingName) line += ` (actual path: ${full})`;
    lines.push(`${line}\n`);
    if (json['backing-filename-format'] !== undefined) lines.push(`backing file format: ${json['backing-filename-format']}\n`);
  }
  const specific = json['format-specific'] as { data: unknown } | undefined;
  if (specific) {
    lines.push('Format specific information:\n');
    dumpValue(1, specific.data, lines);
  }
  return lines.join('');
}

/** `qemu-img map --output=json`: one row per line, in qemu's own spacing. */
export function mapJson(entries: readonly QemuMapEntry[]): string {
  const rows = entries.map((e) => {
    let row = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
    if (e.offset !== undefined) row += `, "offset": ${e.offset}`;
    return `${row}}`;
  });
  return `[${rows.join(',\n')}]\n`;
}

/** printf("%#-16" PRIx64): "0x" prefix except for zero, left-aligned in 16 columns. */
function hexColumn(value: number): string {
  return (value === 0 ? '0' : `0x${value.toString(16)}`).padEnd(16);
}

/** A map row and the name of the file (layer of the backing chain) that supplies it. */
export interface MapRow extends QemuMapEntry {
  filename: string;
}

/**
 * The table of `qemu-img map` (human): only ranges stored as data with a file offset. Returns undefined when
 * a row holds data without an offset (compressed clusters), which qemu-img refuses to show in this form.
 */
export function mapHuman(rows: readonly MapRow[]): string | undefined {
  const lines = [`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`];
  for (const row of rows) {
    if (row.data && row.offset === undefined) return undefined;
    if (row.data && !row.zero) lines.push(`${hexColumn(row.start)}${hexColumn(row.length)}${hexColumn(row.offset ?? 0)}${row.filename}\n`);
  }
  return lines.join('');
}

/** `qemu-img check --output=json`: a field only when qemu-img prints it (counts that are not zero). */
export function checkJson(report: CheckReport, filename: string, format: string): Record<string, unknown> {
  const json: Record<string, unknown> = {};
  const put = (key: string, value: number | undefined) => {
    if (value !== undefined && value !== 0) json[key] = value;
  };
  put('image-end-offset', report.imageEndOffset);
  put('compressed-clusters', report.compressedClusters);
  put('total-clusters', report.totalClusters);
  put('corruptions', report.corruptions);
  json['check-errors'] = report.checkErrors;
  put('leaks', report.leaks);
  put('corruptions-fixed', report.corruptionsFixed);
  put('leaks-fixed', report.leaksFixed);
  put('allocated-clusters', report.allocatedClusters);
  json['filename'] = filename;
  json['format'] = format;
  put('fragmented-clusters', report.fragmentedClusters);
  return json;
}

/**
 * printf("%0.2f"). toFixed() rounds an exact tie (x.xx5, only possible when 8x is an integer) up, glibc
 * rounds it to even.
 */
export function fixed2(value: number): string {
  const scaled = value * 100;
  if (Number.isInteger(value * 8) && scaled - Math.floor(scaled) === 0.5) {
    const floor = Math.floor(scaled);
    return ((floor % 2 === 0 ? floor : floor + 1) / 100).toFixed(2);
  }
  return value.toFixed(2);
}

/** The text of `qemu-img check` (dump_human_image_check). */
export function checkHuman(report: CheckReport): string {
  const lines: string[] = [];
  if (report.corruptions === 0 && report.leaks === 0 && report.checkErrors === 0) {
    lines.push('No errors were found on the image.\n');
  } else {
    if (report.corruptions > 0) {
      lines.push(`\n${report.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`);
    }
    if (report.leaks > 0) {
      lines.push(`\n${report.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`);
    }
    if (report.checkErrors > 0) lines.push(`\n${report.checkErrors} internal errors have occurred during the check.\n`);
  }
  const total = report.totalClusters ?? 0;
  const allocated = report.allocatedClusters ?? 0;
  if (total !== 0 && allocated !== 0) {
    const percent = (part: number, whole: number) => fixed2((part * 100) / whole);
    lines.push(
      `${allocated}/${total} = ${percent(allocated, total)}% allocated, ${percent(report.fragmentedClusters ?? 0, allocated)}% fragmented, ` +
        `${percent(report.compressedClusters ?? 0, allocated)}% compressed clusters\n`,
    );
  }
  if (report.imageEndOffset) lines.push(`Image end offset: ${report.imageEndOffset}\n`);
  return lines.join('');
}
