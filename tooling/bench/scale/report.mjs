// The scale mode's tables: one row per (image, scenario), footnotes for failures, and the scaling table.
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

export const fmtMs = (ms) => (ms == null ? '—' : ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);
export const fmtBytes = (bytes) =>
  bytes == null ? '—' : bytes >= GiB ? `${(bytes / GiB).toFixed(2)} GiB` : bytes >= MiB ? `${(bytes / MiB).toFixed(1)} MiB` : bytes >= KiB ? `${(bytes / KiB).toFixed(0)} KiB` : `${bytes} B`;
const fmtRss = (kib) => (kib ? `${(kib / 1024).toFixed(0)} MiB` : '—');
const ratio = (a, b) => (a == null || b == null || !(b > 0) ? '—' : a / b >= 100 ? `${(a / b).toFixed(0)}x` : `${(a / b).toFixed(1)}x`);
export function fmtCount(n) {
  if (n == null) return '—';
  const log = Math.log2(n);
  if (n >= 1024 && Number.isInteger(log)) return `2^${log}`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(0)}k`;
  return String(n);
}

/** The verdict cell for a `qemu-img check` of ic's result. */
export function checkCell(check) {
  if (!check) return '—';
  if (check.status === 0) return 'clean';
  if (check.status === 3) {
    const refs = check.references;
    if (refs && refs.unreferenced === 0 && refs.duplicates === 0 && check.leaks === refs.qemuCheckSpuriousLeaks) return 'clean†';
    return refs ? `leaks ${check.leaks} (${refs.unreferenced} real)` : `leaks ${check.leaks}`;
  }
  if (check.status === 2) return `CORRUPT ${check.corruptions ?? ''}`.trim();
  if (check.status === 63) return 'n/a';
  return `check ${check.status}`;
}
function afterFailureText({ from, afterFailure: a }) {
  const intact = a.sizeUnchanged && a.metadataUnchanged && a.mapUnchanged;
  return `${intact ? 'unchanged' : 'CHANGED'} (size ${a.sizeUnchanged ? 'same' : 'differs'}, ${from} metadata ${a.metadataUnchanged ? 'same' : 'differs'}, qemu-img map ${a.mapUnchanged ? 'same' : 'differs'}), qemu-img check -f ${from} exit ${a.check?.status}`;
}
const compareCell = (compare) => (!compare ? '—' : compare.skipped ? 'skipped' : compare.timedOut ? 'timeout' : compare.status === 0 ? 'identical' : compare.status === 1 ? 'DIFFERS' : `error ${compare.status}`);

function pad(rows) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => String(row[i]).length)));
  return rows.map((row) => row.map((cell, i) => (i < 2 ? String(cell).padEnd(widths[i]) : String(cell).padStart(widths[i]))).join(' | '));
}

/** Prints the main table and returns the footnote lines. */
export function mainTable(rows, log = console.log) {
  const header = ['scenario', 'image', 'clusters', 'ic time', 'limit', 'ic/limit', 'qemu-img', 'qemu/ic', 'ic RSS', 'qemu RSS', 'written ic', 'written qemu', 'flushes', 'check', 'compare', 'cmp time', 'load'];
  const table = [header];
  const notes = [];
  const note = (text) => {
    const at = notes.findIndex((line) => line.endsWith(` ${text}`));
    if (at >= 0) return at + 1;
    notes.push(`[${notes.length + 1}] ${text}`);
    return notes.length;
  };
  for (const row of rows) {
    const ic = row.ic ?? {};
    const failed = !ic.ok;
    let icCell = fmtMs(ic.ms);
    if (row.error) {
      icCell = `ERR [${note(`${row.image} ${row.scenario}: ${row.error}`)}]`;
    } else if (failed) {
      const n = note(`${row.image} ${row.scenario}: ic ${ic.timedOut ? `timed out after ${fmtMs(ic.ms)}` : `exit ${ic.status ?? `signal ${ic.signal}`} after ${fmtMs(ic.ms)}`}: ${ic.stderrFirst || '(no stderr)'}${row.afterFailure ? `; the file afterwards: ${afterFailureText(row)}` : ''}`);
      icCell = `FAIL ${fmtMs(ic.ms)} [${n}]`;
    }
    const qemu = row.qemu ?? {};
    let qemuCell = fmtMs(qemu.ms);
    if (qemu.skipped) {
      qemuCell = `skip [${note(`${row.image} ${row.scenario}: qemu-img not run: ${qemu.skipped}`)}]`;
    } else if (qemu.status != null && qemu.status !== 0 && !(row.kind === 'read' && row.scenario === 'check' && [2, 3].includes(qemu.status))) {
      qemuCell = `FAIL [${note(`${row.image} ${row.scenario}: qemu-img exit ${qemu.status}${qemu.timedOut ? ' (timed out)' : ''}: ${qemu.stderrFirst}`)}]`;
    }
    const limit = row.limit ? `${row.limit.estimated ? '~' : ''}${fmtMs(row.limit.ms)}` : '—';
    const check = row.kind === 'read' ? (row.scenario === 'check' ? `ic ${ic.status} / qemu ${qemu.status}` : '—') : checkCell(row.check);
    const compare = row.kind === 'read'
      ? row.sameOutput == null ? '—' : row.sameOutput ? 'same output' : `differs [${note(`${row.image} ${row.scenario}: ic's output differs from qemu-img's at ${row.firstDifference}`)}]`
      : row.compare?.skipped ? `skipped [${note(`compare skipped: ${row.compare.reason}`)}]` : compareCell(row.compare);
    table.push([
      row.scenario,
      row.image,
      fmtCount(row.clusters),
      icCell,
      limit,
      failed ? '—' : ratio(ic.ms, row.limit?.ms),
      qemuCell,
      failed || qemu.skipped ? '—' : ratio(qemu.ms, ic.ms),
      fmtRss(ic.maxRssKiB),
      fmtRss(qemu.maxRssKiB),
      fmtBytes(ic.report?.io?.bytesWritten),
      row.kind === 'read' ? '—' : fmtBytes(qemu.written),
      ic.report?.io?.flushes ?? '—',
      check,
      compare,
      row.compare && !row.compare.skipped ? fmtMs(row.compare.ms) : '—',
      row.loadBefore ? row.loadBefore[0].toFixed(1) : '—',
    ]);
  }
  for (const line of pad(table)) log(line);
  return notes;
}

/** clusters vs ic time vs RSS for the qcow2 -> QED / VMDK pairs on the scaling images. */
export function scalingTable(rows, log = console.log) {
  const picked = rows.filter((row) => row.scaling && ['qcow2-to-qed', 'qcow2-to-vmdk'].includes(row.scenario)).sort((a, b) => a.scenario.localeCompare(b.scenario) || a.clusterSize - b.clusterSize || a.clusters - b.clusters);
  if (!picked.length) return;
  const table = [['scenario', 'image', 'clusters', 'cluster', 'src metadata', 'ic time', 'µs/cluster', 'limit', 'ic/limit', 'ic RSS', 'RSS B/cluster', 'result']];
  for (const row of picked) {
    const ic = row.ic ?? {};
    table.push([
      row.scenario,
      row.image,
      fmtCount(row.clusters),
      fmtBytes(row.clusterSize),
      fmtBytes(row.sourceMetadataBytes),
      fmtMs(ic.ms),
      ic.ms ? ((ic.ms * 1000) / row.clusters).toFixed(2) : '—',
      row.limit ? `${row.limit.estimated ? '~' : ''}${fmtMs(row.limit.ms)}` : '—',
      ic.ok ? ratio(ic.ms, row.limit?.ms) : '—',
      fmtRss(ic.maxRssKiB),
      ic.maxRssKiB ? ((ic.maxRssKiB * 1024) / row.clusters).toFixed(1) : '—',
      row.error ? 'error' : ic.ok ? (row.check?.status === 0 || checkCell(row.check) === 'clean†' ? 'ok' : checkCell(row.check)) : ic.timedOut ? 'timeout' : `exit ${ic.status}`,
    ]);
  }
  for (const line of pad(table)) log(line);
}
