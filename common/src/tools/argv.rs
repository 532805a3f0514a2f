//! `${...}` references in a tool's arguments: parsed once when the definition loads.

/// What a reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `${config.NAME}`: the setting's value (or its default).
    Config(String),
    /// `${inputs.NAME}`: the input, passed as its `as` says.
    Input(String),
    /// `${value}`: inside `optional_args`, the setting or input they belong to.
    Value,
    /// `${output_file}`: the file the tool writes its output to.
    OutputFile,
    /// `${workdir}`: the task's private working directory.
    Workdir,
}

/// How a list is turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Items joined with commas.
    Csv,
    /// Items joined with newlines.
    Lines,
    /// The value as compact JSON.
    Json,
    /// One argument per item (only as a whole argument).
    Args,
}

/// A piece of an argument template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Text(String),
    /// A reference and its optional filter.
    Ref(Source, Option<Filter>),
}

/// One argument as written, split into literal text and references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgTemplate {
    /// The pieces, in order.
    pub segments: Vec<Segment>,
}

impl ArgTemplate {
    /// Parses `text`, naming the reference that is malformed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                segments.push(Segment::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("`{}` is not closed by `}}`", &rest[start..]))?;
            segments.push(parse_ref(&after[..end])?);
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Self { segments })
    }

    /// The reference, when the argument is exactly one reference and nothing else.
    pub fn whole_ref(&self) -> Option<(&Source, Option<Filter>)> {
        match self.segments.as_slice() {
            [Segment::Ref(source, filter)] => Some((source, *filter)),
            _ => None,
        }
    }

    /// Every reference of the argument.
    pub fn refs(&self) -> impl Iterator<Item = (&Source, Option<Filter>)> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Ref(source, filter) => Some((source, *filter)),
            Segment::Text(_) => None,
        })
    }
}

fn parse_ref(inner: &str) -> Result<Segment, String> {
    let (name, filter) = match inner.split_once('|') {
        Some((name, filter)) => (name.trim(), Some(parse_filter(filter.trim(), inner)?)),
        None => (inner.trim(), None),
    };
    let source = match name.split_once('.') {
        Some(("config", n)) if valid_name(n) => Source::Config(n.to_string()),
        Some(("inputs", n)) if valid_name(n) => Source::Input(n.to_string()),
        None if name == "value" => Source::Value,
        None if name == "output_file" => Source::OutputFile,
        None if name == "workdir" => Source::Workdir,
        _ => {
            return Err(format!(
                "unknown reference `${{{inner}}}` (use ${{config.NAME}}, ${{inputs.NAME}}, \
                 ${{value}}, ${{output_file}} or ${{workdir}})"
            ));
        }
    };
    Ok(Segment::Ref(source, filter))
}

fn parse_filter(filter: &str, inner: &str) -> Result<Filter, String> {
    match filter {
        "csv" => Ok(Filter::Csv),
        "lines" => Ok(Filter::Lines),
        "json" => Ok(Filter::Json),
        "args" => Ok(Filter::Args),
        other => Err(format!(
            "unknown filter `{other}` in `${{{inner}}}` (use csv, lines, json or args)"
        )),
    }
}

/// A setting, input or dataset name: letters, digits, `_` and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_text_and_references() {
        let t = ArgTemplate::parse("-T${config.timing}x${value|csv}").unwrap();
        assert_eq!(
            t.segments,
            vec![
                Segment::Text("-T".into()),
                Segment::Ref(Source::Config("timing".into()), None),
                Segment::Text("x".into()),
                Segment::Ref(Source::Value, Some(Filter::Csv)),
            ]
        );
        assert!(t.whole_ref().is_none());
        let whole = ArgTemplate::parse("${inputs.hosts}").unwrap();
        assert_eq!(
            whole.whole_ref(),
            Some((&Source::Input("hosts".into()), None))
        );
        assert_eq!(ArgTemplate::parse("-jsonl").unwrap().refs().count(), 0);
    }

    #[test]
    fn malformed_references_are_named() {
        assert!(
            ArgTemplate::parse("${config.x")
                .unwrap_err()
                .contains("not closed")
        );
        assert!(
            ArgTemplate::parse("${params.x}")
                .unwrap_err()
                .contains("${params.x}")
        );
        assert!(
            ArgTemplate::parse("${config.x|upper}")
                .unwrap_err()
                .contains("upper")
        );
        assert!(ArgTemplate::parse("${config.}").is_err());
    }
}
