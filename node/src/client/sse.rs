//! A Server-Sent Events reader: lines in, events out (`event:` name and joined `data:` lines;
//! comments and unknown fields ignored), as the HTML standard's event-stream format says.

use std::io::BufRead;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `message` when absent.
    pub name: String,
    pub data: String,
}

/// Accumulates lines until a blank line completes an event.
#[derive(Debug, Default)]
pub struct Parser {
    name: Option<String>,
    data: Vec<String>,
}

impl Parser {
    /// Feeds one line (without its line ending); returns an event when the line completed one.
    pub fn line(&mut self, line: &str) -> Option<Event> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            let name = self.name.take();
            if self.data.is_empty() {
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            return Some(Event {
                name: name.unwrap_or_else(|| "message".to_owned()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.name = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
        None
    }
}

/// Reads events from `reader` until it ends; `on_event` returns false to stop early.
pub fn read_events(
    reader: impl BufRead,
    mut on_event: impl FnMut(Event) -> bool,
) -> std::io::Result<()> {
    let mut parser = Parser::default();
    for line in reader.lines() {
        if let Some(event) = parser.line(&line?) {
            if !on_event(event) {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_assembled_from_lines() {
        let stream = ": keep-alive\n\nevent: state\ndata: {\"a\":1}\n\ndata: one\ndata:two\r\n\r\nevent: progress\nid: 7\nretry: 10\ndata: {\"percent\":50}\n\n";
        let mut events = Vec::new();
        read_events(stream.as_bytes(), |event| {
            events.push(event);
            true
        })
        .unwrap();
        assert_eq!(
            events,
            vec![
                Event {
                    name: "state".into(),
                    data: "{\"a\":1}".into()
                },
                Event {
                    name: "message".into(),
                    data: "one\ntwo".into()
                },
                Event {
                    name: "progress".into(),
                    data: "{\"percent\":50}".into()
                },
            ]
        );
    }

    #[test]
    fn reading_stops_when_asked_and_ignores_an_unfinished_event() {
        let stream = "data: 1\n\ndata: 2\n\ndata: 3";
        let mut seen = Vec::new();
        read_events(stream.as_bytes(), |event| {
            seen.push(event.data);
            seen.len() < 2
        })
        .unwrap();
        assert_eq!(seen, vec!["1", "2"]);
        let mut all = Vec::new();
        read_events(stream.as_bytes(), |event| {
            all.push(event.data);
            true
        })
        .unwrap();
        assert_eq!(all, vec!["1", "2"]);
    }
}
