// The explanation heatmap: one word's region weights (GET /api/images/{id}/explain), drawn
// over the photo. Low weights dim the photo; high ones leave it clear with a warm tint.

// weights: rows * cols floats, row-major, summing to 1; aspect: the photo's height / width.
// The regions tile the whole image (the indexer resizes it to a square without cropping), so
// the grid is stretched over the displayed photo: CSS lays `canvas` exactly over the <img>.
export function drawHeatmap(canvas, weights, [rows, cols], aspect) {
  const cells = document.createElement("canvas");
  cells.width = cols;
  cells.height = rows;
  const ctx = cells.getContext("2d");
  const pixels = ctx.createImageData(cols, rows);
  const max = Math.max(...weights) || 1;
  weights.forEach((w, i) => {
    const v = Math.max(0, w) / max; // 0..1
    // low: dimmed dark blue; high: clear warm amber
    pixels.data[i * 4] = Math.round(20 + 235 * v);
    pixels.data[i * 4 + 1] = Math.round(24 + 156 * v);
    pixels.data[i * 4 + 2] = Math.round(60 - 40 * v);
    pixels.data[i * 4 + 3] = Math.round(255 * (0.68 - 0.46 * v));
  });
  ctx.putImageData(pixels, 0, 0);
  canvas.width = 480;
  canvas.height = Math.max(1, Math.round(480 * aspect));
  const out = canvas.getContext("2d");
  out.clearRect(0, 0, canvas.width, canvas.height);
  out.imageSmoothingEnabled = true;
  out.imageSmoothingQuality = "high";
  out.drawImage(cells, 0, 0, canvas.width, canvas.height);
}
