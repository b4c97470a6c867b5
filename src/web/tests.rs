//! The request and response of any model, without a server: parameters from the view,
//! refusals, paging with and without a key field, titles.

use serde_json::{json, Value};

use super::{
    params::Engine,
    query,
    request::{title, Id, Order, Range, Request},
    response::{Hit, Ordered, Raw, RawBucket, RawFacet, Relation, Response, Segment, Total},
};
use crate::model::{KeyType, Model};

fn refinebio() -> Model {
    Model::load("refinebio").unwrap()
}

#[test]
fn parameters_come_from_the_view_and_round_trip() {
    let m = refinebio();
    let r =
        Request::parse(&m, Some("q=liver&organism=Mus+musculus&organism=Homo+sapiens&platform_q=illu&sort=-accession&distinct=samples"))
            .unwrap();
    assert_eq!(r.selected[1], ["Mus musculus", "Homo sapiens"]);
    assert_eq!(r.facet_search(2), Some("illu"));
    assert_eq!(r.order, Order { sort: Some(0), descending: true });
    assert_eq!(r.distinct, Some(0));
    assert_eq!(Request::parse(&m, Some(&r.to_query())).unwrap(), r);
    let after = Request { after: Some(vec![json!("GSE2"), json!(2)]), ..r.clone() };
    assert_eq!(Request::parse(&m, Some(&after.to_query())).unwrap(), after);
    assert_eq!(r.toggled(1, "Mus musculus").selected[1], ["Homo sapiens"]);
}

#[test]
fn refuses_what_the_view_does_not_declare() {
    let m = refinebio();
    for (q, says) in [
        ("course=CS101", "unknown parameter `course`; the known ones are q, technology, organism, platform"),
        ("age_gte=3", "unknown parameter `age_gte`"),
        ("distinct=university", "`distinct` must be samples"),
        ("sort=age", "`sort` must be one of relevance, accession, -accession"),
        ("after=[1]&sort=accession", "not a page cursor"),
        ("q=a&q=b", "more than once"),
    ] {
        let e = Request::parse(&m, Some(q)).unwrap_err();
        assert!(e.0.contains(says), "{q}: {e}");
    }
    let students = Model::students();
    let e = Request::parse(&students, Some("age_gte=30&age_lt=20")).unwrap_err();
    assert!(e.0.contains("`age_gte` (30) must be less than `age_lt` (20)"), "{e}");
    assert_eq!(Request::parse(&students, Some("age_gte=18&age_lt=20")).unwrap().ranges[0], Range { gte: Some(18), lt: Some(20) });
}

/// A model repeating its key in no field (no `number`, no `key_field`): an integer
/// year before its text title.
const KEYLESS: &str = "name = \"m\"\n[document]\ntable = \"books\"\nkey = \"id\"\n[[document.fields]]\nname = \"year\"\n\
                       type = \"integer\"\n[[document.fields]]\nname = \"title\"\ntype = \"text\"\n";

fn keyless(patch: impl Fn(String) -> String) -> Model {
    Model::parse(&patch(KEYLESS.to_string()), "t").unwrap()
}

fn uuid_keys(m: String) -> String {
    m.replace("key = \"id\"", "key = \"id\"\nkey_type = \"uuid\"")
}

#[test]
fn a_model_without_a_key_field_refuses_cursors_saying_what_to_add() {
    let (integer, uuid) = (keyless(|m| m), keyless(uuid_keys));
    for (m, add) in [(&integer, "add number = \"id\" under [document]"), (&uuid, "add key_field = \"id\" under [document]")] {
        for q in ["after=[1.0,5]", "after=garbage", "engine=sql&after=[1.0,5]", "page=2&after=[1.0,5]"] {
            let e = Request::parse(m, Some(q)).unwrap_err();
            assert!(e.0.starts_with("`after` (a page cursor) cannot be used with this model") && e.0.contains("`page=N`"), "{q}: {e}");
            assert!(e.0.contains(add), "{q}: {e}");
        }
        let e = Request::parse(m, Some("size=100&page=101")).unwrap_err();
        assert!(e.0.contains("past the first 10000 results") && e.0.contains(add) && !e.0.contains("follow the `next`"), "{e}");
        let e = Request::parse(m, Some("size=1000")).unwrap_err();
        assert!(e.0.contains("ask for the next `page`"), "{e}");
        let r = Request::parse(m, Some("page=3&size=50")).unwrap();
        assert_eq!((r.page, r.size, r.key_field.as_deref()), (3, 50, None));
    }
    // A name the document already uses is not suggested.
    let taken = keyless(|m| m.replace("name = \"year\"", "name = \"id\""));
    assert_eq!(taken.key_field_hint().as_deref(), Some("number = \"key\""));
    // A model that declares the field takes cursors, and has nothing to add.
    let keyed = keyless(|m| m.replace("key = \"id\"", "key = \"id\"\nnumber = \"id\""));
    assert_eq!((keyed.key_field_hint(), keyed.paging_note()), (None, None));
    assert!(Request::parse(&keyed, Some("after=[1.0,5]")).unwrap().after.is_some());
    let e = Request::parse(&keyed, Some("size=100&page=101")).unwrap_err();
    assert!(e.0.contains("follow the `next` cursor"), "{e}");
    let note = uuid.paging_note().unwrap();
    assert!(note.contains("no `next` cursor") && note.contains("key_field = \"id\""), "{note}");
}

fn hits(n: usize, key_type: KeyType) -> Vec<Hit> {
    (0..n)
        .map(|i| Hit {
            id: Id::parse(key_type, &(i + 1).to_string()).unwrap(),
            score: 1.0,
            title: format!("t{i}"),
            highlight: None,
            fields: Ordered(Vec::new()),
            cursor: vec![json!(1.0), json!(i + 1)],
        })
        .collect()
}

fn raw(n: usize, total: u64) -> Raw {
    Raw { total: Total { value: total, relation: Relation::Eq }, hits: hits(n, KeyType::Integer), facets: vec![], histograms: vec![] }
}

#[test]
fn answers_without_a_key_field_name_the_next_page_instead_of_a_cursor() {
    let m = keyless(|m| m);
    let r = Request::parse(&m, Some("size=10&page=2")).unwrap();
    let a = Response::assemble(&r, raw(11, 50), Engine::Index, 1.0);
    assert_eq!((a.hits.len(), a.next.as_deref(), a.next_page), (10, None, Some(3)));
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!((v.get("next"), &v["next_page"]), (None, &json!(3)));
    // The last page; the last page a number reaches.
    assert_eq!(Response::assemble(&r, raw(10, 20), Engine::Sql, 1.0).next_page, None);
    let deep = Request::parse(&m, Some("size=100&page=100")).unwrap();
    assert_eq!(Response::assemble(&deep, raw(101, 10_000), Engine::Sql, 1.0).next_page, None);
    // A model with the field: a cursor, no page number.
    let keyed = keyless(|m| m.replace("key = \"id\"", "key = \"id\"\nnumber = \"id\""));
    let r = Request::parse(&keyed, Some("size=10&page=2")).unwrap();
    let a = Response::assemble(&r, raw(11, 50), Engine::Index, 1.0);
    assert_eq!((a.next.as_deref(), a.next_page), (Some("[1.0,10]"), None));
}

#[test]
fn without_a_key_field_the_index_breaks_ties_in_the_order_documents_were_written() {
    let m = keyless(|m| m);
    let body = query::hits_body(&Request::parse(&m, None).unwrap());
    assert_eq!(body["sort"], json!([{"_score": {"order": "desc"}}, {"_seq_no": {"order": "asc"}}]));
    let students = Model::students();
    let body = query::hits_body(&Request::parse(&students, Some("sort=-age")).unwrap());
    assert_eq!(body["sort"][1], json!({"id": {"order": "asc", "unmapped_type": "long"}}), "{body}");
}

#[test]
fn without_a_search_section_hits_are_titled_by_the_first_text_field_or_the_key() {
    let m = keyless(|m| m);
    let r = Request::parse(&m, None).unwrap();
    assert_eq!(r.view.title, crate::model::Template(vec![crate::model::Piece::Field("title".into())]));
    let hit = |doc: Value| query::hit(&r, Id::Integer(7), &doc, 1.0, None, vec![]);
    assert_eq!(hit(json!({"year": 1999, "title": "Dune"})).title, "Dune");
    assert_eq!(hit(json!({"year": 1999, "title": null})).title, "7", "an empty title: the key");
    let q = Request::parse(&m, Some("q=dune")).unwrap();
    let h = query::hit(&q, Id::Integer(7), &json!({"title": ""}), 1.0, Some(&json!({})), vec![]);
    assert_eq!((h.title.as_str(), h.highlight), ("7", Some(Segment::plain("7"))));
    // No text or keyword field at all: the key (here a uuid).
    let m = keyless(|m| uuid_keys(m).replace("type = \"text\"", "type = \"integer\""));
    let r = Request::parse(&m, None).unwrap();
    let id = "0b6f0c4e-5b1a-4c1e-9a0e-8f4c2b7d1e3a";
    let h = query::hit(&r, Id::parse(KeyType::Uuid, id).unwrap(), &json!({"year": 1, "title": 2}), 1.0, None, vec![]);
    assert_eq!(h.title, id);
    assert_eq!(title(&r.view, &json!({}), &id), id);
}

#[test]
fn the_students_view_refuses_what_it_cannot_serve_with_a_reason() {
    let m = Model::students();
    for (q, says) in [
        ("colour=red", "unknown parameter `colour`"),
        ("size=101", "more than the 100 hits"),
        ("size=0", "`size` must be"),
        ("year=XX", "`year` must be FR, SO, JR or SR, not \"XX\""),
        ("age_gte=20&age_lt=20", "must be less than"),
        ("age_gte=abc", "`age_gte` must be a whole number"),
        ("sort=name", "`sort` must be one of"),
        ("page=501", "first 10000 results"),
        ("after=[1,2]&sort=last_name", "not a page cursor"),
        ("q=a&q=b", "more than once"),
        ("distinct=colour", "`distinct` must be"),
        ("engine=solr", "`engine` must be"),
        ("university=%E9cole", "`university` is not valid UTF-8"),
    ] {
        let e = Request::parse(&m, Some(q)).unwrap_err();
        assert!(e.0.contains(says), "{q}: {e}");
    }
    let long = format!("q={}", "a".repeat(crate::web::params::MAX_QUERY_CHARS + 1));
    assert!(Request::parse(&m, Some(&long)).unwrap_err().0.contains("longer than"));
    // Declared values are taken, and a request round-trips through its query string.
    let r = Request::parse(&m, Some("year=SR&course=CS101&course=MATH201&age_gte=18&age_lt=20&sort=-age")).unwrap();
    assert_eq!(r.selected[0], ["CS101", "MATH201"]);
    assert_eq!(r.selected[2], ["SR"]);
    assert_eq!(Request::parse(&m, Some(&r.to_query())).unwrap(), r);
}

#[test]
fn toggling_a_value_goes_back_to_the_first_page() {
    let m = Model::students();
    let r = Request::parse(&m, Some("course=CS101&page=3")).unwrap();
    let t = r.toggled(0, "CS101");
    assert!(t.selected[0].is_empty());
    assert_eq!(t.page, 1);
    assert_eq!(r.toggled(1, "MIT").href(), "/?course=CS101&university=MIT");
}

#[test]
fn a_selected_value_stays_visible_at_zero_and_the_histogram_has_every_bucket_between() {
    let m = Model::students();
    let req = Request::parse(&m, Some("university=KPI&age_gte=20&age_lt=22&distinct=university")).unwrap();
    let raw = Raw {
        total: Total { value: 0, relation: Relation::Eq },
        hits: vec![],
        facets: vec![
            RawFacet::default(),
            RawFacet { top: vec![RawBucket { key: "MIT".into(), doc_count: 3, distinct: Some(2) }], sum_other: 0, selected: vec![] },
            RawFacet::default(),
        ],
        histograms: vec![vec![
            RawBucket { key: 18, doc_count: 1, distinct: Some(1) },
            RawBucket { key: 22, doc_count: 2, distinct: Some(1) },
        ]],
    };
    let v = serde_json::to_value(Response::assemble(&req, raw, Engine::Index, 1.0)).unwrap();
    assert_eq!(v["facets"]["university"]["buckets"][1], json!({"key": "KPI", "doc_count": 0, "selected": true, "distinct": 0}));
    let ages: Vec<Value> =
        v["histograms"]["age"]["buckets"].as_array().unwrap().iter().map(|b| json!([b["from"], b["doc_count"], b["selected"]])).collect();
    assert_eq!(ages, vec![json!([18, 1, false]), json!([20, 0, true]), json!([22, 2, false])]);
}

#[test]
fn a_cursor_value_of_the_wrong_kind_for_its_sort_key_is_refused_here_not_by_an_engine() {
    let m = Model::students();
    for q in [
        "sort=age&after=[\"x\",5]",
        "q=ann&after=[\"x\",5]",
        "after=[\"x\",5]",
        "sort=last_name&after=[1,\"Ann\",5]",
        "sort=-age&after=[true,5]",
    ] {
        let e = Request::parse(&m, Some(q)).unwrap_err();
        assert!(e.0.contains("is not a sort value of"), "{q}: {e}");
    }
    for q in ["sort=age&after=[20,5]", "sort=last_name&after=[null,\"Ann\",5]", "q=ann&after=[3.5,5]", "sort=-age&after=[null,5]"] {
        assert!(Request::parse(&m, Some(q)).is_ok(), "{q}");
    }
}
