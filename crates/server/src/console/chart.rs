//! Minutes as an inline SVG line chart: no script, no asset, drawn on the server.
//!
//! Every text in the picture is ours (series names, numbers), never a visitor's.

use std::fmt::Write;

use super::history::Minute;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 18.0;

/// One of a minute's figures.
type Figure = fn(&Minute) -> u64;

/// The three series of `minutes` over `span` minutes (the last at the right edge), with
/// the largest value on the axis.
pub(crate) fn minutes_chart(minutes: &[Minute], span: usize) -> String {
    let series: [(&str, Figure); 3] =
        [("clicks", |m| m.clicks), ("noted", |m| m.noted), ("delivered", |m| m.delivered)];
    let shown = &minutes[minutes.len().saturating_sub(span)..];
    let top = shown.iter().flat_map(|m| series.iter().map(move |(_, f)| f(m))).max().unwrap_or(0).max(1);
    let x = |i: usize| LEFT + (WIDTH - LEFT) * (span - shown.len() + i) as f64 / (span.max(2) - 1) as f64;
    let y = |v: u64| (HEIGHT - BOTTOM) * (1.0 - v as f64 / top as f64);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"per minute: clicks, visits noted, notes delivered\">"
    );
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{b}\" x2=\"{WIDTH}\" y2=\"{b}\"/><text x=\"0\" y=\"12\">{top}</text><text x=\"0\" y=\"{b}\">0</text>",
        b = HEIGHT - BOTTOM
    );
    let hours = span / 60;
    let _ = write!(
        svg,
        "<text x=\"{LEFT}\" y=\"{HEIGHT}\">-{hours} h</text><text x=\"{mid}\" y=\"{HEIGHT}\">-{half} h</text><text x=\"{end}\" y=\"{HEIGHT}\" text-anchor=\"end\">now</text>",
        mid = LEFT + (WIDTH - LEFT) / 2.0,
        half = hours / 2,
        end = WIDTH
    );
    for (name, value) in series {
        let points: Vec<String> =
            shown.iter().enumerate().map(|(i, m)| format!("{:.1},{:.1}", x(i), y(value(m)))).collect();
        let _ = write!(svg, "<polyline class=\"series {name}\" points=\"{}\"/>", points.join(" "));
        // The minute under way as a dot: a line of one point would draw nothing.
        if let Some(last) = shown.last() {
            let (cx, cy) = (x(shown.len() - 1), y(value(last)));
            let _ = write!(svg, "<circle class=\"series {name}\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\"/>");
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_minute_is_at_the_right_edge_and_the_top_is_the_largest_value() {
        let minutes = [
            Minute { at: 0, clicks: 4, noted: 2, delivered: 1 },
            Minute { at: 60, clicks: 10, noted: 3, delivered: 3 },
        ];
        let svg = minutes_chart(&minutes, 1440);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(">10</text>"), "the axis' top: {svg}");
        assert!(svg.contains("class=\"series clicks\" points=\"719.5,") && svg.contains(" 720.0,0.0\""), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(
            svg.contains("<circle class=\"series clicks\" cx=\"720.0\" cy=\"0.0\""),
            "the last minute's dot: {svg}"
        );
        assert!(minutes_chart(&[], 60).contains("points=\"\""), "no minutes: empty lines, no panic");
    }
}
