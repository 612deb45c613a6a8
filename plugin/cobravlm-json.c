/* gst-cobra: results as JSON, for text_src's text-format=json
 *
 * This library is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Library General Public
 * License as published by the Free Software Foundation; either
 * version 2.1 of the License, or (at your option) any later version.
 */

#include <math.h>

#include "gstcobravlm-private.h"

/* A JSON string: quotes, backslashes and control characters escaped, invalid UTF-8 (an upstream
 * stream-id or region type may hold any bytes) replaced by U+FFFD. */
static void
json_string (GString * out, const gchar * text)
{
  gchar *valid = g_utf8_make_valid (text, -1);

  g_string_append_c (out, '"');
  for (const gchar * s = valid; *s; s++) {
    guchar c = (guchar) * s;

    if (c == '"' || c == '\\')
      g_string_append_printf (out, "\\%c", c);
    else if (c == '\n')
      g_string_append (out, "\\n");
    else if (c < 0x20 || c == 0x7f)
      g_string_append_printf (out, "\\u%04x", c);
    else
      g_string_append_c (out, (gchar) c);
  }
  g_string_append_c (out, '"');
  g_free (valid);
}

static void json_value (GString * out, const GValue * v);

static void
json_number (GString * out, gdouble x)
{
  gchar buf[G_ASCII_DTOSTR_BUF_SIZE];

  if (isfinite (x))
    g_string_append (out, g_ascii_formatd (buf, sizeof buf, "%.9g", x));
  else
    g_string_append (out, "null");      /* JSON has no inf or nan */
}

static void
json_value (GString * out, const GValue * v)
{
  GType t = G_VALUE_TYPE (v);

  if (t == G_TYPE_STRING)
    json_string (out, g_value_get_string (v) ? g_value_get_string (v) : "");
  else if (t == G_TYPE_BOOLEAN)
    g_string_append (out, g_value_get_boolean (v) ? "true" : "false");
  else if (t == G_TYPE_INT)
    g_string_append_printf (out, "%d", g_value_get_int (v));
  else if (t == G_TYPE_UINT)
    g_string_append_printf (out, "%u", g_value_get_uint (v));
  else if (t == G_TYPE_INT64)
    g_string_append_printf (out, "%" G_GINT64_FORMAT, g_value_get_int64 (v));
  else if (t == G_TYPE_UINT64)
    g_string_append_printf (out, "%" G_GUINT64_FORMAT, g_value_get_uint64 (v));
  else if (t == G_TYPE_DOUBLE)
    json_number (out, g_value_get_double (v));
  else if (t == G_TYPE_FLOAT)
    json_number (out, g_value_get_float (v));
  else if (t == GST_TYPE_ARRAY) {
    g_string_append_c (out, '[');
    for (guint i = 0; i < gst_value_array_get_size (v); i++) {
      if (i)
        g_string_append_c (out, ',');
      json_value (out, gst_value_array_get_value (v, i));
    }
    g_string_append_c (out, ']');
  } else {
    gchar *s = gst_value_serialize (v);

    json_string (out, s ? s : "");
    g_free (s);
  }
}

static gboolean
json_field (GQuark field, const GValue * value, gpointer data)
{
  GString *out = data;

  if (out->len > 1)
    g_string_append_c (out, ',');
  json_string (out, g_quark_to_string (field));
  g_string_append_c (out, ':');
  json_value (out, value);
  return TRUE;
}

/* One JSON object with every field of a result, newline-terminated (JSON Lines). */
gchar *
result_to_json (const GstStructure * result)
{
  GString *out = g_string_new ("{");

  gst_structure_foreach (result, json_field, out);
  g_string_append (out, "}\n");
  return g_string_free (out, FALSE);
}
