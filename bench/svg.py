"""Charts as hand-written SVG (standard library only): grouped bars and a
timeline, composed side by side into one file per case."""

import math
from xml.sax.saxutils import escape

COLORS = {"exclusive": "#4e79a7", "reuseport": "#f28e2b", "hermes": "#59a14f"}
W, H = 420, 260               # one panel
ML, MR, MT, MB = 58, 12, 34, 46


def _nice_max(v):
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v):
    if v >= 1000:
        return "%gk" % round(v / 1000, 2)
    return "%g" % round(v, 2)


def _axes(out, title, ymax, unit):
    ph = H - MT - MB
    out.append('<text x="%d" y="18" font-size="13" font-weight="bold">%s</text>'
               % (ML - 40, escape(title)))
    for k in range(5):
        v = ymax * k / 4
        y = MT + ph - ph * k / 4
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>'
                   % (ML, W - MR, y, y))
        out.append('<text x="%d" y="%.1f" font-size="10" text-anchor="end">%s</text>'
                   % (ML - 4, y + 3, _fmt(v)))
    out.append('<text x="12" y="%d" font-size="10" transform="rotate(-90 12 %d)" '
               'text-anchor="middle">%s</text>' % (MT + ph // 2, MT + ph // 2, escape(unit)))


def bars(title, groups, series, values, unit):
    """values[s][g] (None = missing) as grouped bars; one <g> panel."""
    out = []
    vmax = max([v for s in series for v in values[s] if v is not None] or [1])
    ymax = _nice_max(vmax)
    _axes(out, title, ymax, unit)
    pw, ph = W - ML - MR, H - MT - MB
    gw = pw / max(1, len(groups))
    bw = gw * 0.8 / len(series)
    for gi, g in enumerate(groups):
        x0 = ML + gi * gw + gw * 0.1
        for si, s in enumerate(series):
            v = values[s][gi]
            if v is None:
                continue
            h = ph * v / ymax
            out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s">'
                       '<title>%s %s: %s</title></rect>'
                       % (x0 + si * bw, MT + ph - h, bw - 1, h, COLORS.get(s, "#999"),
                          escape(s), escape(g), _fmt(v)))
        out.append('<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%s</text>'
                   % (ML + gi * gw + gw / 2, MT + ph + 14, escape(g)))
    _legend(out, series)
    return "\n".join(out)


def timeline(title, series, points, unit, marks=(), xmax=None):
    """points[s] = [(x, y or None)]; marks = [(x, label)] drawn as dashed lines."""
    out = []
    ys = [y for s in series for _, y in points[s] if y is not None]
    ymax = _nice_max(max(ys or [1]))
    xmax = xmax or max([x for s in series for x, _ in points[s]] or [1])
    _axes(out, title, ymax, unit)
    pw, ph = W - ML - MR, H - MT - MB
    X = lambda x: ML + pw * x / xmax                 # noqa: E731
    Y = lambda y: MT + ph - ph * min(y, ymax) / ymax  # noqa: E731
    for k in range(int(xmax) + 1):
        if xmax <= 12 or k % 2 == 0:
            out.append('<text x="%.1f" y="%d" font-size="10" text-anchor="middle">%d</text>'
                       % (X(k), MT + ph + 14, k))
    out.append('<text x="%d" y="%d" font-size="10" text-anchor="middle">seconds</text>'
               % (ML + pw // 2, MT + ph + 27))
    for x, label in marks:
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#c00" '
                   'stroke-dasharray="4 3"/><text x="%.1f" y="%d" font-size="9" fill="#c00">'
                   '%s</text>' % (X(x), X(x), MT, MT + ph, X(x) + 2, MT + 9, escape(label)))
    for s in series:
        segs, cur = [], []
        for x, y in points[s]:
            if y is None:
                if cur:
                    segs.append(cur)
                cur = []
            else:
                cur.append("%.1f,%.1f" % (X(x), Y(y)))
        if cur:
            segs.append(cur)
        for seg in segs:
            out.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>'
                       % (COLORS.get(s, "#999"), " ".join(seg)))
    _legend(out, series)
    return "\n".join(out)


def _legend(out, series):
    x = ML
    for s in series:
        out.append('<rect x="%d" y="%d" width="10" height="10" fill="%s"/>'
                   '<text x="%d" y="%d" font-size="11">%s</text>'
                   % (x, H - 14, COLORS.get(s, "#999"), x + 13, H - 5, escape(s)))
        x += 13 + 7 * len(s) + 14


def page(panels, caption=""):
    """Panels side by side in one SVG document."""
    width = W * len(panels)
    height = H + (18 if caption else 0)
    body = []
    for i, p in enumerate(panels):
        body.append('<g transform="translate(%d,0)">\n%s\n</g>' % (i * W, p))
    if caption:
        body.append('<text x="8" y="%d" font-size="10" fill="#555">%s</text>'
                    % (H + 12, escape(caption)))
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'viewBox="0 0 %d %d" font-family="sans-serif">\n'
            '<rect width="100%%" height="100%%" fill="white"/>\n%s\n</svg>\n'
            % (width, height, width, height, "\n".join(body)))
