use super::*;
use crate::event::Data;
use podpbx_config::{EventKind, Secret, SecretSource};
use std::time::{SystemTime, UNIX_EPOCH};

fn hook(url: &str, events: &[EventKind], attempts: u32) -> Webhook {
    Webhook {
        url: HttpUrl::parse(url).unwrap(),
        events: events.to_vec(),
        secret: Some(Secret::new("k", SecretSource::Inline)),
        timeout: Duration::from_secs(2),
        max_attempts: attempts,
    }
}

fn door(n: u64) -> Event {
    Event::new(
        Data::Doorbell {
            from: "door".into(),
            from_name: None,
            to: "all".into(),
        },
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + n),
        format!("e{n}"),
    )
}

fn trunk(n: u64) -> Event {
    Event::new(
        Data::Trunk {
            trunk: "p".into(),
            state: "down",
            reason: None,
        },
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + n),
        format!("t{n}"),
    )
}

#[test]
fn fan_out_by_kind_in_order_one_in_flight() {
    let t0 = Instant::now();
    let mut d = Dispatcher::new(
        vec![
            hook("http://a/", &[EventKind::Doorbell], 3),
            hook("http://b/", &EventKind::ALL, 3),
        ],
        10,
        "podpbx",
    );
    d.push(t0, door(1));
    d.push(t0, trunk(2));
    assert_eq!(d.stats().queued, 3);
    let a1 = d.poll_attempt(t0).unwrap();
    let b1 = d.poll_attempt(t0).unwrap();
    assert!(d.poll_attempt(t0).is_none(), "one in flight per webhook");
    assert_eq!((a1.hook, b1.hook), (0, 1));
    let body = |a: &Attempt| String::from_utf8_lossy(&a.request).into_owned();
    assert!(body(&a1).contains("\"id\":\"e1\"") && body(&b1).contains("\"id\":\"e1\""));
    assert!(body(&a1).contains("X-Podpbx-Signature: sha256="));
    d.finished(t0, b1.id, Ok(204));
    let b2 = d.poll_attempt(t0).unwrap();
    assert!(body(&b2).contains("\"id\":\"t2\""));
    d.finished(t0, a1.id, Ok(200));
    d.finished(t0, b2.id, Ok(200));
    assert_eq!(d.stats().delivered, 3);
    assert_eq!(d.stats().queued, 0);
    assert!(d.poll_attempt(t0).is_none());
    assert_eq!(d.poll_timeout(), None);
}

#[test]
fn retries_back_off_then_give_up() {
    let t0 = Instant::now();
    let mut d = Dispatcher::new(vec![hook("http://a/", &EventKind::ALL, 4)], 10, "podpbx");
    d.push(t0, door(1));
    d.push(t0, door(2));
    let mut now = t0;
    let mut waits = Vec::new();
    for n in 1..=4 {
        let a = d.poll_attempt(now).expect("attempt");
        assert_eq!(a.attempt, n);
        assert!(
            String::from_utf8_lossy(&a.request).contains("\"id\":\"e1\""),
            "order kept: e1 first"
        );
        d.finished(
            now,
            a.id,
            if n % 2 == 0 {
                Ok(503)
            } else {
                Err("connection refused".into())
            },
        );
        if n < 4 {
            let due = d.poll_timeout().unwrap();
            waits.push(due - now);
            assert!(d.poll_attempt(due - Duration::from_millis(1)).is_none());
            now = due;
        }
    }
    assert_eq!(
        waits,
        vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4)
        ]
    );
    assert_eq!(d.stats().given_up, 1);
    assert_eq!(d.stats().failed_attempts, 4);
    // e2 goes next.
    let a = d.poll_attempt(now).unwrap();
    assert!(String::from_utf8_lossy(&a.request).contains("\"id\":\"e2\""));
    assert_eq!(a.attempt, 1);
    assert_eq!(backoff(7), Duration::from_secs(60));
    assert_eq!(backoff(30), Duration::from_secs(60));
}

#[test]
fn queue_is_bounded_and_drops_the_oldest() {
    let t0 = Instant::now();
    let mut d = Dispatcher::new(vec![hook("http://dead/", &EventKind::ALL, 20)], 5, "podpbx");
    for n in 0..1000 {
        d.push(t0, door(n));
    }
    assert_eq!(d.stats().queued, 5);
    assert_eq!(d.stats().dropped, 995);
    // The newest survive.
    let a = d.poll_attempt(t0).unwrap();
    assert!(String::from_utf8_lossy(&a.request).contains("\"id\":\"e995\""));
    // Unknown or repeated outcomes are ignored.
    d.finished(t0, 424242, Ok(200));
    d.finished(t0, a.id, Ok(200));
    d.finished(t0, a.id, Ok(200));
    assert_eq!(d.stats().delivered, 1);
}

#[test]
fn reload_keeps_waiting_deliveries_of_kept_hooks() {
    let t0 = Instant::now();
    let mut d = Dispatcher::new(
        vec![
            hook("http://a/", &EventKind::ALL, 3),
            hook("http://b/", &EventKind::ALL, 3),
        ],
        10,
        "podpbx",
    );
    d.push(t0, door(1));
    let a = d.poll_attempt(t0).unwrap();
    d.reconfigure(vec![hook("http://a/", &EventKind::ALL, 3)], 10);
    // The old attempt's answer no longer counts; the delivery is retried.
    d.finished(t0, a.id, Ok(200));
    assert_eq!(d.stats().delivered, 0);
    assert_eq!(d.stats().queued, 1);
    let a2 = d.poll_attempt(t0).unwrap();
    assert_eq!(a2.attempt, 2);
    d.finished(t0, a2.id, Ok(200));
    assert_eq!(d.stats().delivered, 1);
}
