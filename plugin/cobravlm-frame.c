/* gst-cobra: what the cobravlm element reads from a frame besides its pixels for the model:
 * the regions an upstream detector marked, crops of them, and a thumbnail for change gating.
 *
 * This library is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Library General Public
 * License as published by the Free Software Foundation; either
 * version 2.1 of the License, or (at your option) any later version.
 */

#include <stdlib.h>

#include "gstcobravlm-private.h"

/* ---- regions ---- */

static gboolean
type_wanted (gchar ** types, GQuark type)
{
  if (types == NULL || types[0] == NULL)
    return TRUE;
  for (; *types; types++)
    if (g_quark_from_string (*types) == type)
      return TRUE;
  return FALSE;
}

/* The frame's GstVideoRegionOfInterestMeta boxes of the wanted types, grown by `margin` (a
 * fraction of each side) and clamped to the frame, at most `max` of them (in meta order).
 * Boxes with nothing left inside the frame are skipped and counted in *skipped. */
GArray *
frame_regions (GstBuffer * buf, const GstVideoInfo * info, gchar ** types, guint max,
    gdouble margin, guint * skipped)
{
  GArray *regions = g_array_new (FALSE, FALSE, sizeof (Region));
  gint fw = GST_VIDEO_INFO_WIDTH (info), fh = GST_VIDEO_INFO_HEIGHT (info);
  gpointer state = NULL;
  GstMeta *meta;

  *skipped = 0;
  while ((meta = gst_buffer_iterate_meta_filtered (buf, &state,
              GST_VIDEO_REGION_OF_INTEREST_META_API_TYPE))) {
    GstVideoRegionOfInterestMeta *roi = (GstVideoRegionOfInterestMeta *) meta;
    gint64 mx = (gint64) (roi->w * margin), my = (gint64) (roi->h * margin);
    gint64 x0 = (gint64) roi->x - mx, y0 = (gint64) roi->y - my;
    gint64 x1 = (gint64) roi->x + roi->w + mx, y1 = (gint64) roi->y + roi->h + my;
    Region r;

    if (!type_wanted (types, roi->roi_type))
      continue;
    x0 = CLAMP (x0, 0, fw);
    y0 = CLAMP (y0, 0, fh);
    x1 = CLAMP (x1, 0, fw);
    y1 = CLAMP (y1, 0, fh);
    if (x1 <= x0 || y1 <= y0 || regions->len >= max) {
      (*skipped)++;
      continue;
    }
    r.id = roi->id;
    r.type = roi->roi_type;
    r.x = (gint) x0;
    r.y = (gint) y0;
    r.w = (gint) (x1 - x0);
    r.h = (gint) (y1 - y0);
    g_array_append_val (regions, r);
  }
  return regions;
}

/* Points `out` at the part of `frame` inside `r` (no copy). Subsampled formats need the
 * corner on their chroma grid: it moves up/left by at most one pixel, the size follows. */
void
frame_crop (const GstVideoFrame * frame, const CobraImage * full, const Region * r,
    CobraImage * out)
{
  const GstVideoFormatInfo *finfo = frame->info.finfo;
  guint xs = 0, ys = 0;
  gint x, y;

  for (guint c = 0; c < GST_VIDEO_FORMAT_INFO_N_COMPONENTS (finfo); c++) {
    xs = MAX (xs, GST_VIDEO_FORMAT_INFO_W_SUB (finfo, c));
    ys = MAX (ys, GST_VIDEO_FORMAT_INFO_H_SUB (finfo, c));
  }
  x = r->x & ~((1 << xs) - 1);
  y = r->y & ~((1 << ys) - 1);
  *out = *full;
  out->width = r->w + (r->x - x);
  out->height = r->h + (r->y - y);
  for (guint p = 0; p < GST_VIDEO_FRAME_N_PLANES (frame); p++) {
    gint comp[GST_VIDEO_MAX_COMPONENTS];

    gst_video_format_info_component (finfo, p, comp);
    out->planes[p] = full->planes[p] +
        (gsize) (y >> GST_VIDEO_FORMAT_INFO_H_SUB (finfo, comp[0])) * full->strides[p] +
        (gsize) (x >> GST_VIDEO_FORMAT_INFO_W_SUB (finfo, comp[0])) *
        GST_VIDEO_FORMAT_INFO_PSTRIDE (finfo, comp[0]);
  }
}

/* ---- change gating ---- */

/* The luma of the pixel at (x, y): Y, grey, or (R + 2G + B) / 4. */
static guint
luma_at (const GstVideoFrame * f, gint x, gint y)
{
  const GstVideoFormatInfo *finfo = f->info.finfo;
  guint sum = 0;

  if (!GST_VIDEO_FORMAT_INFO_IS_RGB (finfo)) {
    return *((const guint8 *) GST_VIDEO_FRAME_COMP_DATA (f, 0) +
        (gsize) y * GST_VIDEO_FRAME_COMP_STRIDE (f, 0) +
        (gsize) x * GST_VIDEO_FRAME_COMP_PSTRIDE (f, 0));
  }
  for (guint c = 0; c < 3; c++)
    sum += *((const guint8 *) GST_VIDEO_FRAME_COMP_DATA (f, c) +
        (gsize) y * GST_VIDEO_FRAME_COMP_STRIDE (f, c) +
        (gsize) x * GST_VIDEO_FRAME_COMP_PSTRIDE (f, c)) << (c == 1);
  return sum / 4;
}

/* A THUMB_SIDE x THUMB_SIDE luma thumbnail: each cell the mean of THUMB_SAMPLES x THUMB_SAMPLES
 * pixels spread over it, so its cost does not grow with the frame (1,024 cells x 16 reads). */
void
frame_thumbnail (const GstVideoFrame * f, guint8 * thumb)
{
  gint w = GST_VIDEO_FRAME_WIDTH (f), h = GST_VIDEO_FRAME_HEIGHT (f);

  for (gint cy = 0; cy < THUMB_SIDE; cy++) {
    for (gint cx = 0; cx < THUMB_SIDE; cx++) {
      guint sum = 0;

      for (gint sy = 0; sy < THUMB_SAMPLES; sy++)
        for (gint sx = 0; sx < THUMB_SAMPLES; sx++)
          sum += luma_at (f,
              (gint) (((gint64) cx * THUMB_SAMPLES + sx) * w / (THUMB_SIDE * THUMB_SAMPLES)),
              (gint) (((gint64) cy * THUMB_SAMPLES + sy) * h / (THUMB_SIDE * THUMB_SAMPLES)));
      thumb[cy * THUMB_SIDE + cx] = (guint8) (sum / (THUMB_SAMPLES * THUMB_SAMPLES));
    }
  }
}

/* Mean absolute difference of two thumbnails, in luma levels (0-255). */
gdouble
thumbnail_difference (const guint8 * a, const guint8 * b)
{
  guint64 sum = 0;

  for (guint i = 0; i < THUMB_SIDE * THUMB_SIDE; i++)
    sum += (guint) abs ((gint) a[i] - (gint) b[i]);
  return (gdouble) sum / (THUMB_SIDE * THUMB_SIDE);
}
