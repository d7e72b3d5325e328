//! The relay's pure parts, without PostgreSQL or Kafka: which reads land and where the
//! watermark stops, the bounds on what is in flight, and how many rows to read at once.

use super::landing::{
    land_in_order, over_in_flight_bounds, Delivered, DeliveryFailure, InFlight, Landed,
};
use super::rows::next_fetch_rows;
use super::{RelaySettings, Watermark};
use std::collections::VecDeque;

fn at(id: i64) -> Watermark {
    Watermark { txid: 7, id }
}

fn refused(id: i64) -> Delivered {
    Ok(Err(DeliveryFailure {
        at: at(id),
        error: "broker down".into(),
        for_good: false,
    }))
}

#[test]
fn batches_that_landed_together_store_one_watermark_after_the_last() {
    let (landed, failed) = land_in_order(vec![
        (at(3), 3, Ok(Ok(()))),
        (at(5), 2, Ok(Ok(()))),
        (at(9), 4, Ok(Ok(()))),
    ]);
    assert_eq!(
        landed,
        Some(Landed {
            last: at(9),
            count: 9,
            reads: 3
        })
    );
    assert!(failed.is_none());
}

#[test]
fn the_watermark_stops_before_the_first_batch_that_did_not_land() {
    let (landed, failed) = land_in_order(vec![
        (at(3), 3, Ok(Ok(()))),
        (at(5), 2, refused(4)),
        (at(9), 4, Ok(Ok(()))),
    ]);
    assert_eq!(
        landed,
        Some(Landed {
            last: at(3),
            count: 3,
            reads: 1
        })
    );
    assert!(matches!(failed, Some(Ok(Err(f))) if f.at == at(4)));
    let (landed, failed) = land_in_order(vec![(at(5), 2, refused(5))]);
    assert_eq!(landed, None);
    assert!(failed.is_some());
    assert_eq!(land_in_order(Vec::new()).0, None);
}

#[tokio::test]
async fn batches_in_flight_are_bounded_in_bytes_headers_included_as_well_as_in_number() {
    let settings = RelaySettings {
        max_reads_in_flight: 4,
        queue_kbytes: 1024,
        ..RelaySettings::default()
    };
    let read = |bytes: usize| InFlight {
        last: at(1),
        count: 1,
        bytes,
        deliveries: tokio::spawn(async { Ok(()) }),
    };
    let mut in_flight: VecDeque<InFlight> = (0..4).map(|_| read(256 * 1024)).collect();
    assert!(
        !over_in_flight_bounds(&in_flight, &settings),
        "4 reads, 1 MiB"
    );
    in_flight.push_back(read(0));
    assert!(over_in_flight_bounds(&in_flight, &settings), "5 reads");
    // Two reads of rows that are all headers: few, but more bytes than the queue.
    let heavy: VecDeque<InFlight> = (0..2).map(|_| read(600 * 1024)).collect();
    assert!(
        over_in_flight_bounds(&heavy, &settings),
        "1.2 MiB in 2 reads"
    );
}

#[test]
fn large_rows_are_read_as_many_as_the_fetch_bytes_hold() {
    assert_eq!(next_fetch_rows(100 * 1024, 32 << 20, 10_000), 327);
}

#[test]
fn small_rows_fill_a_whole_relay_read() {
    assert_eq!(next_fetch_rows(100, 32 << 20, 10_000), 10_000);
}

#[test]
fn a_row_larger_than_the_fetch_bytes_is_still_read() {
    assert_eq!(next_fetch_rows(64 << 20, 32 << 20, 10_000), 1);
    assert_eq!(next_fetch_rows(0, 32 << 20, 10_000), 10_000);
}
