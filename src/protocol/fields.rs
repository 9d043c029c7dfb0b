//! `fields` is a cursor over a request's JSON object: each op takes the
//! fields it knows, each typed and bounded, and [`Fields::finish`] refuses
//! whatever is left (a typo never silently changes what is signed).
//! Messages name the field, never the value sent.

use serde_json::{Map, Value};

use super::MAX_UNIX_TIME;

pub struct Fields {
    obj: Map<String, Value>,
}

/// A field's problem, as the message of an `invalid_request`.
pub type FieldError = String;

impl Fields {
    pub fn new(obj: Map<String, Value>) -> Fields {
        Fields { obj }
    }

    /// A field as it came (`null` reads as absent).
    pub fn value(&mut self, key: &str) -> Option<Value> {
        self.take(key)
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        match self.obj.remove(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub fn string(&mut self, key: &str) -> Result<Option<String>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("field `{key}` must be a string")),
        }
    }

    pub fn required_string(&mut self, key: &str) -> Result<String, FieldError> {
        self.string(key)?
            .ok_or_else(|| format!("field `{key}` is missing"))
    }

    pub fn bool(&mut self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(format!("field `{key}` must be a boolean")),
        }
    }

    pub fn object(&mut self, key: &str) -> Result<Option<Map<String, Value>>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(format!("field `{key}` must be a JSON object")),
        }
    }

    /// A positive whole number of seconds.
    pub fn seconds(&mut self, key: &str) -> Result<Option<u64>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|t| t >= 1) => Ok(n.as_u64()),
            Some(_) => Err(format!(
                "field `{key}` must be a positive integer (seconds)"
            )),
        }
    }

    /// A Unix time, range-checked (0 to [`MAX_UNIX_TIME`]).
    pub fn unix_time(&mut self, key: &str) -> Result<Option<i64>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(t) if (0..=MAX_UNIX_TIME).contains(&t) => Ok(Some(t)),
                _ => Err(format!(
                    "field `{key}` must be a Unix time in seconds between 0 and {MAX_UNIX_TIME}"
                )),
            },
            Some(_) => Err(format!("field `{key}` must be an integer (Unix seconds)")),
        }
    }

    /// Refuse any field the op did not take.
    pub fn finish(self, op: &str) -> Result<(), FieldError> {
        match self.obj.keys().next() {
            None => Ok(()),
            Some(extra) => Err(format!(
                "field {:?} is not valid for op {op:?}",
                shown(extra)
            )),
        }
    }
}

/// A name from the request, made safe to echo: short, no control chars.
pub fn shown(s: &str) -> String {
    s.chars().take(32).filter(|c| !c.is_control()).collect()
}
