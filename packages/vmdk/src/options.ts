import type { OptionDescriptor, OptionValues } from '@ic/core/sdk';
import { ADAPTER_TYPES, MAX_PARENT_NAME, type AdapterType } from './descriptor.js';
import { vmdkError } from './errors.js';

/** qemu-img's subformat names; only monolithicSparse is a single self-contained file ic can create. */
export const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'] as const;

/** Options of create() and of an in-place conversion to VMDK: qemu-img's names, plus two ic-only ones. */
export const VMDK_OPTIONS: readonly OptionDescriptor[] = [
  {
    name: 'subformat',
    type: 'enum',
    values: SUBFORMATS,
    default: 'monolithicSparse',
    help: 'VMDK sub-format; ic creates monolithicSparse only (the others are several files or compressed)',
  },
  { name: 'adapter_type', type: 'enum', values: ADAPTER_TYPES, default: 'ide', help: 'virtual adapter type written to ddb.adapterType (ide uses 16 heads, the others 255)' },
  { name: 'hwversion', type: 'string', help: 'VMDK hardware version (ddb.virtualHWVersion); 4 unless compat6 is set' },
  { name: 'compat6', type: 'boolean', default: false, help: 'VMDK version 6 image (same as hwversion=6)' },
  { name: 'toolsversion', type: 'string', default: '2147483647', help: 'VMware guest tools version (ddb.toolsVersion)' },
  { name: 'zeroed_grain', type: 'boolean', default: false, help: 'enable zeroed-grain GTEs (grain table entry 1 reads as zeros; header version 2)' },
  {
    name: 'parent_cid',
    type: 'string',
    help: "ic only: the parent's CID (8 hex digits from its descriptor's CID= line); required with a backing file, since qemu refuses reads through a parent whose CID differs",
  },
  { name: 'extent_name', type: 'string', help: 'ic only: file name written in the embedded extent line (default: the image file name; qemu ignores it)' },
];

export interface ResolvedOptions {
  subformat: (typeof SUBFORMATS)[number];
  adapterType: AdapterType;
  hwVersion: string;
  toolsVersion: string;
  zeroedGrain: boolean;
  parentCid?: number;
  extentName?: string;
}

/** Text that may go between the quotes of a descriptor value. */
export function isDescriptorSafe(text: string, maxLength = MAX_PARENT_NAME): boolean {
  return text.length > 0 && text.length <= maxLength && !/["\r\n\0]/.test(text);
}

export function parseCid(text: string, option = 'parent_cid'): number {
  const trimmed = text.trim().replace(/^0x/i, '');
  if (!/^[0-9a-fA-F]{1,8}$/.test(trimmed)) throw vmdkError('INVALID', `option ${option} must be 1 to 8 hexadecimal digits, got '${text}'`);
  return parseInt(trimmed, 16);
}

/** Checks the semantic rules qemu applies to the options (types were checked by parseOptions). */
export function resolveOptions(values: OptionValues): ResolvedOptions {
  const known = new Set(VMDK_OPTIONS.map((option) => option.name));
  for (const name of Object.keys(values)) {
    if (!known.has(name)) throw vmdkError('INVALID', `unknown option '${name}' (options: ${[...known].join(', ')})`);
  }
  const subformat = String(values.subformat ?? 'monolithicSparse');
  if (!(SUBFORMATS as readonly string[]).includes(subformat)) {
    throw vmdkError('INVALID', `subformat must be one of ${SUBFORMATS.join(', ')}, got '${subformat}'`);
  }
  const adapterType = String(values.adapter_type ?? 'ide');
  if (!(ADAPTER_TYPES as readonly string[]).includes(adapterType)) {
    throw vmdkError('INVALID', `adapter_type must be one of ${ADAPTER_TYPES.join(', ')}, got '${adapterType}'`);
  }
  const compat6 = values.compat6 === true || values.compat6 === 'on' || values.compat6 === 'true';
  let hwVersion = values.hwversion === undefined || values.hwversion === 'undefined' ? undefined : String(values.hwversion);
  if (compat6 && hwVersion !== undefined) throw vmdkError('INVALID', 'compat6 cannot be enabled with hwversion set');
  hwVersion ??= compat6 ? '6' : '4';
  const toolsVersion = String(values.toolsversion ?? '2147483647');
  for (const [name, value] of [
    ['hwversion', hwVersion],
    ['toolsversion', toolsVersion],
  ] as const) {
    if (!isDescriptorSafe(value, 64)) throw vmdkError('INVALID', `option ${name} must be 1 to 64 characters without quotes or line breaks`);
  }
  const resolved: ResolvedOptions = {
    subformat: subformat as ResolvedOptions['subformat'],
    adapterType: adapterType as AdapterType,
    hwVersion,
    toolsVersion,
    zeroedGrain: values.zeroed_grain === true || values.zeroed_grain === 'on' || values.zeroed_grain === 'true',
  };
  if (values.parent_cid !== undefined) resolved.parentCid = parseCid(String(values.parent_cid));
  if (values.extent_name !== undefined) {
    const name = String(values.extent_name);
    if (!isDescriptorSafe(name, 511)) throw vmdkError('INVALID', 'option extent_name must be 1 to 511 characters without quotes or line breaks');
    resolved.extentName = name;
  }
  return resolved;
}

/** A random CID like qemu's g_random_int(), avoiding ffffffff ("no parent"). */
export function randomCid(): number {
  const buffer = new Uint32Array(1);
  const crypto = (globalThis as { crypto?: { getRandomValues?: (array: Uint32Array) => Uint32Array } }).crypto;
  if (crypto?.getRandomValues) crypto.getRandomValues(buffer);
  else buffer[0] = Math.floor(Math.random() * 0xffffffff);
  return buffer[0] === 0xffffffff ? 0xfffffffe : buffer[0]!;
}
