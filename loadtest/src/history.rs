//! The history check of a batch run: after publishing, read every channel
//! the run published to back through `GET /api/history/{channel}` and check
//! that every accepted message is stored at the offset its reply gave, that
//! the stored offsets have no gaps, and that each publisher's messages are
//! stored in the order it sent them.
//!
//! A channel is read forward from just before the lowest offset the run was
//! given (`since` and `epoch`, 1,000 messages a page), so what earlier runs
//! left in the same Redis is not read. [`check_channel`] is the pure part.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Deserialize;
use tokio::task::JoinSet;

use crate::context::{Accepted, Context};
use crate::http_client;
use crate::stats::HistoryCheck;

/// Messages per history read (the API's maximum).
const PAGE: usize = 1000;
/// At most this many pages per channel (`history_size` is at most 10,000).
const MAX_PAGES: usize = 12;
/// Channels read at once, each reader on its own connection.
const READERS: usize = 4;

/// One stored message: its offset and the message number in its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub offset: u64,
    pub k: Option<u64>,
}

/// What a channel's history holds now.
#[derive(Debug, Clone, Default)]
pub struct ChannelHistory {
    pub epoch: String,
    /// Oldest first, as the API returns them.
    pub messages: Vec<Stored>,
}

/// Checks the messages accepted on one channel against its history.
pub fn check_channel(
    accepted: &[Accepted],
    epochs: &[String],
    history: &ChannelHistory,
) -> HistoryCheck {
    let mut check = HistoryCheck {
        channels: 1,
        accepted: accepted.len() as u64,
        ..HistoryCheck::default()
    };
    for pair in history.messages.windows(2) {
        if pair[1].offset != pair[0].offset + 1 {
            check.gaps += 1;
        }
    }
    let by_offset: HashMap<u64, Option<u64>> =
        history.messages.iter().map(|m| (m.offset, m.k)).collect();
    let mut stored_ks = HashSet::new();
    for k in history.messages.iter().filter_map(|m| m.k) {
        if !stored_ks.insert(k) {
            check.duplicates += 1;
        }
    }
    let oldest = history.messages.first().map(|m| m.offset);
    for a in accepted {
        let same_epoch = a
            .epoch
            .is_none_or(|e| epochs.get(e as usize) == Some(&history.epoch));
        let found = match a.offset {
            _ if !same_epoch => false,
            Some(offset) if oldest.is_some_and(|oldest| offset < oldest) => {
                check.trimmed += 1;
                continue;
            }
            Some(offset) => by_offset.get(&offset) == Some(&Some(a.k)),
            None => stored_ks.contains(&a.k),
        };
        if found {
            check.found += 1;
        } else {
            check.missing += 1;
        }
    }
    // Each publisher's messages in the order it sent them (rising k).
    let publisher_of: HashMap<u64, u32> = accepted.iter().map(|a| (a.k, a.publisher)).collect();
    let mut last: HashMap<u32, u64> = HashMap::new();
    for k in history.messages.iter().filter_map(|m| m.k) {
        let Some(&publisher) = publisher_of.get(&k) else {
            check.unaccepted += 1;
            continue;
        };
        if last.get(&publisher).is_some_and(|&previous| previous >= k) {
            check.out_of_order += 1;
        }
        last.insert(publisher, k);
    }
    check
}

#[derive(Deserialize)]
struct Page {
    offset: u64,
    epoch: String,
    messages: Vec<PageMessage>,
}

#[derive(Deserialize)]
struct PageMessage {
    offset: u64,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// Reads one page of a channel's history.
async fn read_page(
    sender: &mut Option<http_client::Sender>,
    ctx: &Context,
    auth: &str,
    path: String,
) -> Result<Page, String> {
    let target = ctx.plan.publish_target();
    if sender.is_none() {
        *sender = Some(http_client::connect(target).await?);
    }
    let Some(s) = sender.as_mut() else {
        return Err("no connection".into());
    };
    let (status, body) = match http_client::request(s, target, auth, Method::GET, &path, None).await
    {
        Ok(answer) => answer,
        Err(error) => {
            *sender = None;
            return Err(error);
        }
    };
    if status != StatusCode::OK {
        return Err(format!(
            "GET {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {path}: {e}"))
}

/// Reads channel `channel` forward from `since` of `epoch` (or its newest
/// page when the run was given no offsets).
async fn read_channel(
    sender: &mut Option<http_client::Sender>,
    ctx: &Context,
    auth: &str,
    channel: &str,
    start: Option<(u64, &str)>,
) -> Result<ChannelHistory, String> {
    let base = format!(
        "/api/history/{}?limit={PAGE}",
        http_client::path_segment(channel)
    );
    let mut history = ChannelHistory::default();
    let Some((mut since, epoch)) = start else {
        let page = read_page(sender, ctx, auth, base).await?;
        history.epoch = page.epoch;
        history.messages = page.messages.iter().map(stored).collect();
        return Ok(history);
    };
    for _ in 0..MAX_PAGES {
        let path = format!("{base}&since={since}&epoch={epoch}");
        let page = read_page(sender, ctx, auth, path).await?;
        let full = page.messages.len() >= PAGE;
        history.messages.extend(page.messages.iter().map(stored));
        history.epoch = page.epoch;
        match history.messages.last() {
            Some(last) if full && last.offset < page.offset && history.epoch == epoch => {
                since = last.offset;
            }
            _ => break,
        }
    }
    Ok(history)
}

fn stored(message: &PageMessage) -> Stored {
    Stored {
        offset: message.offset,
        k: message
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .and_then(serde_json::Value::as_u64),
    }
}

/// Where to start reading a channel: just before the lowest offset of the
/// latest epoch its accepted messages were given.
fn start_of(accepted: &[Accepted], epochs: &[String]) -> Option<(u64, String)> {
    let epoch = accepted.iter().rev().find_map(|a| a.epoch)?;
    let lowest = accepted
        .iter()
        .filter(|a| a.epoch == Some(epoch))
        .filter_map(|a| a.offset)
        .min()?;
    Some((
        lowest.saturating_sub(1),
        epochs.get(epoch as usize)?.clone(),
    ))
}

/// Reads back every channel the run's accepted messages went to and checks
/// them; `None` when the run kept no log (no `--history-check`).
pub async fn check(ctx: Arc<Context>) -> Option<HistoryCheck> {
    let (entries, epochs) = {
        let mut log = ctx
            .accepted_log
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (
            std::mem::take(&mut log.entries),
            std::mem::take(&mut log.epochs),
        )
    };
    let channels = ctx.channels.len().max(1) as u64;
    let mut per_channel: HashMap<usize, Vec<Accepted>> = HashMap::new();
    for entry in entries {
        per_channel
            .entry((entry.k % channels) as usize)
            .or_default()
            .push(entry);
    }
    let mut work: Vec<(usize, Vec<Accepted>)> = per_channel.into_iter().collect();
    work.sort_by_key(|(channel, _)| *channel);
    let epochs = Arc::new(epochs);
    let mut readers = JoinSet::new();
    let mut shares: Vec<Vec<(usize, Vec<Accepted>)>> = (0..READERS).map(|_| Vec::new()).collect();
    for (i, item) in work.into_iter().enumerate() {
        shares[i % READERS].push(item);
    }
    for share in shares {
        let ctx = Arc::clone(&ctx);
        let epochs = Arc::clone(&epochs);
        readers.spawn(async move {
            let auth = format!("Bearer {}", ctx.plan.api_key.clone().unwrap_or_default());
            let mut sender = None;
            let mut check = HistoryCheck::default();
            for (channel, accepted) in share {
                let name = &ctx.channels[channel];
                let start = start_of(&accepted, &epochs);
                let start = start
                    .as_ref()
                    .map(|(since, epoch)| (*since, epoch.as_str()));
                match read_channel(&mut sender, &ctx, &auth, name, start).await {
                    Ok(history) => check.add(&check_channel(&accepted, &epochs, &history)),
                    Err(error) => {
                        ctx.print_error(&format!("history of {name}: {error}"));
                        check.add(&HistoryCheck {
                            channels: 1,
                            accepted: accepted.len() as u64,
                            read_errors: 1,
                            ..HistoryCheck::default()
                        });
                    }
                }
            }
            check
        });
    }
    let mut total = HistoryCheck::default();
    for check in readers.join_all().await {
        total.add(&check);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(k: u64, offset: u64, publisher: u32) -> Accepted {
        Accepted {
            k,
            offset: Some(offset),
            epoch: Some(0),
            publisher,
        }
    }

    fn stored(offset: u64, k: u64) -> Stored {
        Stored { offset, k: Some(k) }
    }

    fn epochs() -> Vec<String> {
        vec!["e1".to_owned()]
    }

    #[test]
    fn every_accepted_message_in_place_is_ok() {
        let accepted = [acc(0, 5, 0), acc(1000, 6, 1), acc(2000, 7, 0)];
        let history = ChannelHistory {
            epoch: "e1".into(),
            messages: vec![stored(5, 0), stored(6, 1000), stored(7, 2000)],
        };
        let check = check_channel(&accepted, &epochs(), &history);
        assert!(check.ok(), "{check}");
        assert_eq!(check.found, 3);
    }

    #[test]
    fn gaps_missing_order_and_trimming_are_counted() {
        let accepted = [acc(0, 3, 0), acc(10, 5, 0), acc(20, 7, 0), acc(30, 8, 1)];
        let history = ChannelHistory {
            epoch: "e1".into(),
            // 3 is trimmed; 6 skipped (a gap); 7 holds another message
            // than its reply said; publisher 0's 10 comes after its 20.
            messages: vec![stored(4, 20), stored(5, 10), stored(7, 99), stored(8, 30)],
        };
        let check = check_channel(&accepted, &epochs(), &history);
        assert_eq!(check.trimmed, 1);
        assert_eq!(check.gaps, 1);
        assert_eq!(check.missing, 1);
        assert_eq!(check.found, 2);
        assert_eq!(check.out_of_order, 1);
        assert_eq!(check.unaccepted, 1);
        assert!(!check.ok());
    }

    #[test]
    fn another_epoch_means_the_messages_are_gone() {
        let accepted = [acc(0, 1, 0)];
        let history = ChannelHistory {
            epoch: "e2".into(),
            messages: vec![stored(1, 0)],
        };
        let check = check_channel(&accepted, &epochs(), &history);
        assert_eq!(check.missing, 1);
        assert!(!check.ok());
    }

    #[test]
    fn without_offsets_messages_are_found_by_number() {
        let accepted = [Accepted {
            k: 4,
            offset: None,
            epoch: None,
            publisher: 0,
        }];
        let history = ChannelHistory {
            epoch: "e1".into(),
            messages: vec![stored(1, 4), stored(2, 4)],
        };
        let check = check_channel(&accepted, &[], &history);
        assert_eq!(check.found, 1);
        assert_eq!(check.duplicates, 1);
    }

    #[test]
    fn reading_starts_before_the_lowest_offset_of_the_latest_epoch() {
        let mut a = vec![acc(0, 9, 0), acc(1, 4, 0)];
        assert_eq!(start_of(&a, &epochs()), Some((3, "e1".to_owned())));
        a.push(Accepted {
            k: 2,
            offset: Some(1),
            epoch: Some(1),
            publisher: 0,
        });
        let two = vec!["e1".to_owned(), "e2".to_owned()];
        assert_eq!(start_of(&a, &two), Some((0, "e2".to_owned())));
        assert_eq!(start_of(&[], &two), None);
    }
}
