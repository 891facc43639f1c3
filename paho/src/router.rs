//! A router dispatching received messages to handlers by topic filter.

use std::fmt;

use paho_packets::topic::{matches, split_shared, validate_topic_filter};

use crate::{Error, Handler, Message};

type Route = Box<dyn Fn(&Message) + Send + Sync>;

/// Dispatches messages to the handlers whose topic filter matches the topic (`+` one level,
/// `#` any number; a `$share/{group}/` prefix is stripped, since the server delivers shared
/// subscriptions' messages under their real topic). Every matching route is called, in the
/// order the routes were added; a message no route matches goes to the default handler, if
/// there is one.
///
/// Usable alone ([`dispatch`](Router::dispatch)) or in a handler chain (it implements
/// [`Handler`], handling a message when some route or the default did).
#[derive(Default)]
pub struct Router {
    routes: Vec<(String, Route)>,
    default: Option<Route>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|(f, _)| f.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl Router {
    /// A router without routes.
    pub fn new() -> Self {
        Router::default()
    }

    /// Adds a route; fails with [`Error::Codec`] for an invalid filter.
    pub fn route(
        mut self,
        filter: &str,
        handler: impl Fn(&Message) + Send + Sync + 'static,
    ) -> Result<Self, Error> {
        validate_topic_filter(filter)?;
        let inner = match split_shared(filter)? {
            Some((_, inner)) => inner,
            None => filter,
        };
        self.routes.push((inner.to_owned(), Box::new(handler)));
        Ok(self)
    }

    /// Sets the handler for messages no route matches.
    pub fn default_route(mut self, handler: impl Fn(&Message) + Send + Sync + 'static) -> Self {
        self.default = Some(Box::new(handler));
        self
    }

    /// Calls every route matching the message's topic (or the default); returns how many
    /// handlers were called.
    pub fn dispatch(&self, message: &Message) -> usize {
        let mut n = 0;
        for (filter, h) in &self.routes {
            if matches(filter, message.topic()) {
                h(message);
                n += 1;
            }
        }
        if n == 0 {
            if let Some(d) = &self.default {
                d(message);
                n = 1;
            }
        }
        n
    }
}

impl Handler for Router {
    fn handle(&self, message: &Message) -> bool {
        self.dispatch(message) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn msg(t: &str) -> Message {
        Message::from_publish(paho_packets::Publish {
            topic: t.into(),
            ..Default::default()
        })
    }

    #[test]
    fn routes_by_filter_with_shared_prefix_stripped() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = |name: &'static str| {
            let log = Arc::clone(&log);
            move |m: &Message| log.lock().unwrap().push(format!("{name}:{}", m.topic()))
        };
        let r = Router::new()
            .route("a/+/c", l("plus"))
            .unwrap()
            .route("a/#", l("hash"))
            .unwrap()
            .route("$share/g/s/x", l("shared"))
            .unwrap()
            .default_route(l("default"));
        assert_eq!(r.dispatch(&msg("a/b/c")), 2);
        assert_eq!(r.dispatch(&msg("s/x")), 1);
        assert_eq!(r.dispatch(&msg("z")), 1);
        assert!(r.handle(&msg("a")));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "plus:a/b/c",
                "hash:a/b/c",
                "shared:s/x",
                "default:z",
                "hash:a"
            ]
        );
    }

    #[test]
    fn invalid_filters_are_refused() {
        assert!(Router::new().route("a/#/b", |_| {}).is_err());
        assert!(Router::new().route("$share//a", |_| {}).is_err());
        assert!(!Router::new().handle(&msg("a")));
    }
}
