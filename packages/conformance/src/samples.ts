/**
 * Sample images a driver hands to the kit: real images made by the format's own tools (qemu-img, say), and the
 * only images the kit has of a source-only format, which it cannot build itself. Each comes with the guest content
 * it must read as: the data itself (ImageContent or GuestContent) or a reference reader (an Image, such as
 * flatReference() over a raw copy).
 */
import { MemoryIO, type BlockIO, type Image, type ImageContent, type OpenOptions } from '@ic/core';
import { captureContent, contentFromImageContent, type GuestContent } from './crash/content.js';
import { copyToMemory } from './images.js';

export type SampleExpectation = ImageContent | GuestContent | Image;

export interface Sample {
  /** Shown in test names. */
  name: string;
  /** The image. The kit copies it into memory once and never writes to it. */
  io: BlockIO;
  /** What the guest must read: data pieces, sparse windows, or a reference image to read them from. */
  expected: SampleExpectation;
  /** How to open the sample (its backing image, opened by the caller, when it names one). */
  openOptions?: OpenOptions;
  /** Other files the image names (its backing file) by the name it stores, for the qemu checks after conversions. */
  files?: readonly { name: string; io: BlockIO }[];
}

/** What `samples` gives: the samples, made once per describeDriver call (before the tests are collected). */
export type SampleSource = () => Promise<readonly Sample[]>;

/** A sample as the kit keeps it: bytes in memory (copied again for every test that writes) and the content it must read as. */
export interface LoadedSample {
  name: string;
  pristine: MemoryIO;
  expected: GuestContent;
  openOptions?: OpenOptions;
  files: readonly { name: string; io: MemoryIO }[];
}

function isImage(expected: SampleExpectation): expected is Image {
  return typeof (expected as Image).read === 'function';
}

function isGuestContent(expected: SampleExpectation): expected is GuestContent {
  return (expected as GuestContent).windows instanceof Map;
}

/** The guest content a sample's expectation describes. */
export async function expectedGuestContent(expected: SampleExpectation): Promise<GuestContent> {
  if (isImage(expected)) return captureContent(expected);
  if (isGuestContent(expected)) return expected;
  return contentFromImageContent(expected);
}

/** Calls the hook and copies every sample into memory, so that tests may convert copies freely. */
export async function loadSamples(source: SampleSource): Promise<LoadedSample[]> {
  const out: LoadedSample[] = [];
  for (const sample of await source()) {
    const files = [];
    for (const file of sample.files ?? []) files.push({ name: file.name, io: await copyToMemory(file.io, file.name) });
    out.push({
      name: sample.name,
      pristine: await copyToMemory(sample.io, sample.name),
      expected: await expectedGuestContent(sample.expected),
      ...(sample.openOptions ? { openOptions: sample.openOptions } : {}),
      files,
    });
  }
  return out;
}
