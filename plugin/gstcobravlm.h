/* gst-cobra: the cobravlm element
 *
 * This library is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Library General Public
 * License as published by the Free Software Foundation; either
 * version 2.1 of the License, or (at your option) any later version.
 */
#ifndef __GST_COBRA_VLM_H__
#define __GST_COBRA_VLM_H__

#include <gst/gst.h>
#include <gst/video/video.h>
#include <gst/video/gstvideofilter.h>

G_BEGIN_DECLS

#define GST_TYPE_COBRA_VLM (gst_cobra_vlm_get_type ())
G_DECLARE_FINAL_TYPE (GstCobraVlm, gst_cobra_vlm, GST, COBRA_VLM, GstVideoFilter)

/* Name of the GstCustomMeta carrying the latest result on every outgoing buffer. */
#define GST_COBRA_CAPTION_META_NAME "CobraCaptionMeta"

GST_ELEMENT_REGISTER_DECLARE (cobravlm);

G_END_DECLS

#endif /* __GST_COBRA_VLM_H__ */
