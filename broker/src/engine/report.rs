//! Publish reports: how an applied publish is answered on the wire. Kept
//! apart from the topic tree, which knows events and subscriptions but not
//! the protocol's answers.

use spread_protocol::{EventId, EventKind};

use super::tree::{Applied, Draft};

impl Applied {
    /// The report for a client that may read the topic, as a message.
    pub fn into_response(self, req_id: u64) -> spread_protocol::Response {
        use spread_protocol::{Outcome, Response, Summary};
        let outcome = match self {
            Applied::New {
                event,
                previous,
                notified,
            } => Outcome::New {
                event: Summary::from(&event),
                previous: previous.as_ref().map(Summary::from),
                notified,
            },
            Applied::Existing { event } => Outcome::Existing {
                event: Summary::from(&event),
            },
            Applied::TooLate { rejected, current } => Outcome::TooLate {
                rejected: Summary::from(&rejected),
                current: Some(current),
            },
            Applied::Present { current } => Outcome::Present {
                event: Summary::from(&current),
                current: Some(current),
            },
        };
        Response::Report { req_id, outcome }
    }

    /// Appends the report frame answering request `req_id` of a publish
    /// whose draft was `draft`. A writer that may not read the topic
    /// (`readable` false) learns nothing it could not have known: the
    /// previous and current events and the subscriber counts are left out,
    /// and a `present` report names its own rejected publish.
    pub fn encode_report(
        &self,
        dst: &mut bytes::BytesMut,
        req_id: u64,
        draft: &Draft<'_>,
        readable: bool,
    ) {
        use spread_protocol::response::encode_report;
        use spread_protocol::{PublishStatus, SummaryRef};
        let (status, event, previous, current, notified) = match self {
            Applied::New {
                event,
                previous,
                notified,
            } => (
                PublishStatus::New,
                SummaryRef::from(event),
                previous.as_ref(),
                None,
                &notified[..],
            ),
            Applied::Existing { event } => (
                PublishStatus::Existing,
                SummaryRef::from(event),
                None,
                None,
                &[][..],
            ),
            Applied::TooLate { rejected, current } => (
                PublishStatus::TooLate,
                SummaryRef::from(rejected),
                None,
                Some(current),
                &[][..],
            ),
            Applied::Present { current } if readable => (
                PublishStatus::Present,
                SummaryRef::from(current),
                None,
                Some(current),
                &[][..],
            ),
            Applied::Present { .. } => (
                PublishStatus::Present,
                SummaryRef {
                    id: draft.id.unwrap_or(EventId([0; 16])),
                    timestamp: draft.timestamp.unwrap_or(0),
                    iteration: 0,
                    origin: draft.origin,
                    kind: EventKind::Value,
                },
                None,
                None,
                &[][..],
            ),
        };
        let (previous, current, notified) = if readable {
            (previous, current, notified)
        } else {
            (None, None, &[][..])
        };
        encode_report(
            dst,
            req_id,
            status,
            event,
            previous.map(SummaryRef::from),
            current,
            notified,
        );
    }
}
