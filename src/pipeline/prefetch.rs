//! Step 0, for a batch: before the first frame of a batch is processed, the
//! connection-tracking slots every frame will look up are asked for, so
//! that with a big table (a million flows: every lookup a cache miss) the
//! memory waits overlap instead of adding up frame after frame.
//!
//! A guess from the 5-tuple alone, without the tables: the slots a frame
//! might need (a VIP flow, a reply, an ingress flow, a return path) are
//! all asked for, in tables that hold anything. Nothing changes and nothing
//! is counted; whatever cannot be read is left for `process` to judge.

use super::flow::flow_of_ip;
use super::{Input, Pipeline};

impl Pipeline {
    /// Asks the cache for the tracking slots `frame` (as `process` will get
    /// it from `input`) will look up.
    #[inline]
    pub fn prefetch(&self, input: Input, frame: &[u8]) {
        let (vips, ingress, returns) = (
            &self.balancer.conntrack,
            &self.ingress.flows,
            &self.ingress.returns,
        );
        if vips.is_empty() && ingress.is_empty() && returns.is_empty() {
            return;
        }
        let packet = frame.get(input.ip_offset()..).unwrap_or_default();
        let Ok(Some(f)) = flow_of_ip(packet) else {
            return;
        };
        match input {
            // A client's packet to a published port.
            Input::Host => ingress.prefetch(&f.key()),
            // A client's packet to a VIP, or a task's reply: to a VIP
            // client here, to an ingress client, or back to the host the
            // flow came through.
            Input::Tap(_) => {
                vips.prefetch(&f.key());
                vips.prefetch_reply(&f.reply_key());
                ingress.prefetch_reply(&f.reply_key());
                returns.prefetch(&f.reversed().key());
            }
            // A remote task's reply to a VIP client or an ingress client
            // here, or an ingress flow another host routed to a task here.
            Input::Underlay(_) => {
                vips.prefetch_reply(&f.reply_key());
                ingress.prefetch_reply(&f.reply_key());
                returns.prefetch(&f.key());
            }
        }
    }
}
