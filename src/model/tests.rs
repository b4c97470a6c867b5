use super::*;

#[test]
fn the_shipped_models_are_valid() {
    let students = Model::students();
    assert_eq!(students.root.table, "students");
    assert_eq!(
        students.root.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["first_name", "last_name", "age", "year_in_school"]
    );
    let course = students.resolve("course_names").unwrap();
    assert!(course.multi && course.kind == FieldType::Keyword);
    assert_eq!(students.resolve("first_name").unwrap().exact.as_deref(), Some("first_name.raw"));
    assert!(!students.resolve("university.name").unwrap().multi);
    assert!(students.resolve("nope").is_none());
    let refinebio = Model::load("refinebio").unwrap();
    let organisms = refinebio.resolve("organism_names").unwrap();
    assert!(organisms.multi && organisms.kind == FieldType::Keyword);
    assert_eq!(refinebio.search.as_ref().unwrap().distinct[0].field, "sample_ids");
}

fn error_of(text: &str) -> ModelError {
    Model::parse(text, "test.toml").unwrap_err()
}

const MINIMAL: &str = "name = \"m\"\n[document]\ntable = \"books\"\nkey = \"id\"\n[[document.fields]]\nname = \"title\"\ntype = \"text\"\n";

#[test]
fn each_kind_of_mistake_says_where_and_what_to_write() {
    assert!(Model::parse(MINIMAL, "t").is_ok());
    let e = error_of(&MINIMAL.replace("type = \"text\"", "type = \"string\""));
    assert!(e.at.contains("document.fields[0] (title).type") && e.message.contains("keyword, text, integer"), "{e}");
    let e = error_of(&format!("{MINIMAL}colour = \"red\"\n"));
    assert!(e.message.contains("unknown field `colour`"), "{e}");
    let e = error_of(&MINIMAL.replace("key = \"id\"", "key = \"a, b\""));
    assert!(e.message.contains("composite key is not supported"), "{e}");
    let e = error_of(&MINIMAL.replace("table = \"books\"", "table = \"Books; DROP\""));
    assert!(e.message.contains("not a plain lower-case SQL name"), "{e}");
    let rel = "[[document.relations]]\nname = \"author\"\nkind = \"belongs_to\"\ntable = \"authors\"\n[[document.relations.fields]]\nname = \"name\"\ntype = \"keyword\"\n";
    let e = error_of(&format!("{MINIMAL}{rel}"));
    assert!(e.at.contains("document.relations[0] (author)") && e.message.contains("needs `foreign_key`"), "{e}");
    let e = error_of(&format!("{MINIMAL}{}", rel.replace("belongs_to", "belongs_too")));
    assert!(e.message.contains("belongs_to, has_many or many_to_many"), "{e}");
    let e = error_of(&format!(
        "{MINIMAL}{}value = \"nmae\"\nforeign_key = \"author_id\"\n",
        rel.split("[[document.relations.fields]]").next().unwrap()
    ));
    assert!(e.message.contains("`nmae` names no field"), "{e}");
    let e = error_of(&MINIMAL.replace("key = \"id\"", "key = \"id\"\nkey_type = \"uuid\"\nnumber = \"n\""));
    assert!(e.message.contains("only an integer key") && e.message.contains("write key_field = \"n\""), "{e}");
    let e = error_of(&MINIMAL.replace("key = \"id\"", "key = \"id\"\nkey_field = \"n\""));
    assert!(e.at == "document.key_field" && e.message.contains("write number = \"n\""), "{e}");
    let e = error_of(&MINIMAL.replace("key = \"id\"", "key = \"id\"\nkey_type = \"uuid\"\nkey_field = \"title\""));
    assert!(e.at == "document.key_field" && e.message.contains("already a field"), "{e}");
    let e = error_of(&format!("{MINIMAL}[document.completion]\nname = \"c\"\ninputs = [\"{{titel}}\"]\n"));
    assert!(e.message.contains("`{titel}` is not a field") && e.message.contains("title"), "{e}");
    let e = error_of(&format!("{MINIMAL}[search]\nnoun = \"book\"\nplural = \"books\"\ntitle = \"{{title}}\"\n[[search.facets]]\nparam = \"t\"\nfield = \"title\"\nlabel = \"T\"\n"));
    assert!(
        e.message.contains("without a keyword sub-field") && e.message.contains("keyword = \\\"raw\\\"")
            || e.message.contains("keyword = \"raw\""),
        "{e}"
    );
}

#[test]
fn a_facet_s_declared_values_and_a_suggestion_s_detail_are_checked_and_rendered() {
    let search = |facet_extra: &str, suggest_extra: &str| {
        format!(
            "{MINIMAL}[[document.fields]]\nname = \"status\"\ntype = \"keyword\"\n[document.completion]\nname = \"c\"\n\
             inputs = [\"{{title}}\"]\n[search]\nnoun = \"book\"\nplural = \"books\"\ntitle = \"{{title}}\"\n\
             [[search.facets]]\nparam = \"status\"\nfield = \"status\"\nlabel = \"Status\"\n{facet_extra}\
             [search.suggest]\nfield = \"c\"\nlabel = \"{{title}}\"\n{suggest_extra}"
        )
    };
    let m = Model::parse(&search("values = [\"new\", \"old\"]\n", "detail = \"({status})\"\n"), "t").unwrap();
    let view = m.search.as_ref().unwrap();
    assert_eq!(view.facets[0].values, ["new", "old"]);
    assert_eq!(view.facets[0].others, "with a status", "the default names the label");
    let detail = view.suggest.as_ref().unwrap().detail.as_ref().unwrap();
    assert_eq!(detail.render(&serde_json::json!({"title": "Dune", "status": "new"})), "(new)");
    let e = error_of(&search("values = []\n", ""));
    assert!(e.at.contains("search.facets[0] (status).values") && e.message.contains("leave `values` out"), "{e}");
    let e = error_of(&search("values = [\"new\", \"new\"]\n", ""));
    assert!(e.message.contains("\"new\" is listed twice"), "{e}");
    let e = error_of(&search("values = [\" new\"]\n", ""));
    assert!(e.message.contains("without blanks"), "{e}");
    let e = error_of(&search("", "detail = \"{statuss}\"\n"));
    assert!(e.at == "search.suggest.detail" && e.message.contains("`statuss` is not a field"), "{e}");
    // Templates read a relation's field by its path, and a list's values joined.
    let students = Model::students();
    let title = Template::parse("{first_name} at {university.name}: {course_names}").unwrap();
    let doc = serde_json::json!({"first_name": "Ann", "university": {"name": "MIT"}, "course_names": ["A", "B"]});
    assert_eq!(title.render(&doc), "Ann at MIT: A, B");
    assert_eq!(title.render(&serde_json::json!({"first_name": "Ann", "university": null})), "Ann at : ");
    let v = students.search.as_ref().unwrap();
    assert_eq!((v.label_of("university.name"), v.label_of("first_name")), ("University".to_string(), "first name".to_string()));
    assert_eq!(
        [article("university"), article("experiment"), article("user"), article("book")],
        ["a university", "an experiment", "a user", "a book"]
    );
    let e = error_of(&search("", "").replace("[[search.facets]]", "[search.labels]\n\"author.name\" = \"Author\"\n[[search.facets]]"));
    assert!(e.at.contains("search.labels") && e.message.contains("`author.name` is not a field"), "{e}");
    assert_eq!(v.facets.iter().map(|f| f.others.as_str()).collect::<Vec<_>>(), ["in courses", "at universities", "in years"]);
}

#[test]
fn the_document_query_reads_every_level_in_one_statement() {
    let m = Model::load("refinebio").unwrap();
    let q = sql::document_query(&m, sql::Rows::Keys);
    if let Ok(path) = std::env::var("TIDEMARK_PRINT_QUERY") {
        let s = sql::document_query(&Model::students(), sql::Rows::Range { lo: true, hi: true });
        let range = sql::Rows::Range { lo: true, hi: true };
        let rows = [sql::row_query(&Model::students(), range), sql::row_query(&m, range)];
        std::fs::write(path, format!("{s}\n;\n{q}\n;\n{}\n;\n{}\n", rows[0], rows[1])).unwrap();
    }
    assert!(q.starts_with("SELECT t0.\"id\"::text, json_build_object('accession_code', t0.\"accession_code\"::text"), "{q}");
    assert!(q.contains("LEFT JOIN \"organisms\" t20 ON t20.\"id\" = g0c.\"organism_id\""), "{q}");
    // The root's arrays are aggregated once for the batch, picked by the same keys; the
    // three that go through experiment_samples → samples share one pass over them.
    assert_eq!(q.matches("\"experiment_samples\"").count(), 1, "{q}");
    assert!(
        q.contains("array_agg(DISTINCT (t20.\"name\"::text) COLLATE \"C\" ORDER BY (t20.\"name\"::text) COLLATE \"C\") FILTER (WHERE (t20.\"name\"::text) IS NOT NULL) AS v1"),
        "{q}"
    );
    assert!(q.contains("WHERE g0cj.\"experiment_id\" = ANY($1::bigint[]) GROUP BY g0cj.\"experiment_id\") g0 ON g0.k = t0.\"id\""), "{q}");
    assert!(q.contains("WHERE t0.\"id\" = ANY($1::bigint[]) ORDER BY t0.\"id\""), "{q}");
    let place = sql::place(&m, "organism_names.organism").unwrap();
    let f = sql::fanout_query(&m, &place);
    assert!(
        f.contains("FROM \"experiments\" t0 WHERE EXISTS (SELECT 1 FROM \"experiment_samples\" t1j JOIN \"samples\" t1 ON t1.\"id\" = t1j.\"sample_id\" WHERE t1j.\"experiment_id\" = t0.\"id\" AND"),
        "{f}"
    );
    // Matched on the column that references the organism, not on its row (it may be gone).
    assert!(f.contains("AND t1.\"organism_id\" = $1::bigint)") && !f.contains("\"organisms\""), "{f}");
}

#[test]
fn the_capture_marks_the_root_directly_and_other_tables_as_parents() {
    let sql = capture::capture_sql(&Model::students(), &Default::default());
    // The hot path: a one-row UPDATE of a student is one INSERT into the log.
    assert!(sql.contains("CREATE TRIGGER tidemark_capture_update AFTER UPDATE ON \"students\""), "{sql}");
    // Paired by a FULL JOIN (a cached plan is never a nested loop), which also logs both keys
    // of a changed key: no row trigger.
    assert!(
        sql.contains("SELECT coalesce(n.\"id\", o.\"id\")::text, v FROM new_rows n FULL JOIN old_rows o ON o.\"id\" = n.\"id\"\n     WHERE n.\"id\" IS NULL OR o.\"id\" IS NULL OR"),
        "{sql}"
    );
    assert!(!sql.contains("FOR EACH ROW") && sql.contains("LANGUAGE plpgsql SET jit = off"), "{sql}");
    // Enrollments name the student: logged directly; a course renamed: one parent mark.
    assert!(sql.contains("-- student_courses"), "{sql}");
    assert!(sql.contains("tidemark.mark_parents('course_names'"), "{sql}");
    assert!(sql.contains("tidemark.mark_parents('university'"), "{sql}");
    assert!(!sql.to_lowercase().contains("notify"), "no notification");
}

/// A uuid key repeated as `key_field` is a keyword of the document: mapped, built and
/// sortable like `number` is for an integer key.
#[test]
fn a_uuid_key_is_repeated_as_a_keyword() {
    let m = Model::parse(&MINIMAL.replace("key = \"id\"", "key = \"id\"\nkey_type = \"uuid\"\nkey_field = \"key\""), "t").unwrap();
    assert_eq!(m.key_field.as_deref(), Some("key"));
    assert_eq!(m.resolve("key"), Some(Resolved { kind: FieldType::Keyword, multi: false, exact: Some("key".into()) }));
    assert_eq!(mapping::mappings(&m)["properties"]["key"], serde_json::json!({"type": "keyword"}));
    assert!(sql::document_query(&m, sql::Rows::Keys).contains("'key', t0.\"id\")"));
    assert_eq!(mapping::mappings(&Model::students())["properties"]["id"], serde_json::json!({"type": "long"}));
}

/// The README's "Your own schema" example is a valid model, and means what the README says.
#[test]
fn the_readme_example_model_is_valid() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("## Your own schema").expect("the README has the section")..];
    let start = section.find("```toml\n").expect("the section has a model") + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").unwrap()];
    let model = Model::parse(text, "README.md").unwrap_or_else(|e| panic!("the README's model: {e}"));
    assert_eq!((model.name.as_str(), model.root.table.as_str()), ("bookshop", "books"));
    let country = model.resolve("author.country.name").expect("a field two levels down");
    assert!(!country.multi && country.kind == FieldType::Keyword);
    assert!(model.resolve("tags").expect("the tags").multi);
    let search = model.search.as_ref().unwrap();
    assert_eq!(search.facets.iter().map(|f| f.param.as_str()).collect::<Vec<_>>(), ["country", "tag"]);
}

/// A word the page writes after a count is declared in the plural and the singular: a
/// facet's `counts` with `counts_one` (default: the documents' plural and noun), a distinct
/// count's `label` with `one`; one without the other is refused, saying what to add.
#[test]
fn a_counted_word_is_declared_in_the_singular_beside_its_plural() {
    let model = |facet: &str, distinct: &str| {
        format!(
            "{MINIMAL}[[document.fields]]\nname = \"status\"\ntype = \"keyword\"\n[search]\nnoun = \"book\"\nplural = \"books\"\n\
             title = \"{{title}}\"\n[[search.facets]]\nparam = \"status\"\nfield = \"status\"\nlabel = \"Status\"\n{facet}\
             [[search.distinct]]\nparam = \"statuses\"\nfield = \"status\"\nlabel = \"statuses\"\n{distinct}"
        )
    };
    let m = Model::parse(&model("counts = \"copies\"\ncounts_one = \"copy\"\n", "one = \"status\"\n"), "t").unwrap();
    let v = m.search.as_ref().unwrap();
    assert_eq!((v.facets[0].counts.as_str(), v.facets[0].counts_one.as_str()), ("copies", "copy"));
    assert_eq!((v.distinct[0].label.as_str(), v.distinct[0].one.as_str()), ("statuses", "status"));
    // Neither: the facet counts the documents.
    let m = Model::parse(&model("", "one = \"status\"\n"), "t").unwrap();
    let f = &m.search.as_ref().unwrap().facets[0];
    assert_eq!((f.counts.as_str(), f.counts_one.as_str()), ("books", "book"));
    let e = error_of(&model("counts = \"copies\"\n", "one = \"status\"\n"));
    assert_eq!(e.at, "search.facets[0] (status)");
    assert!(e.message.contains("`counts = \"copies\"` without its singular") && e.message.contains("add counts_one = "), "{e}");
    let e = error_of(&model("counts_one = \"copy\"\n", "one = \"status\"\n"));
    assert_eq!(e.at, "search.facets[0] (status)");
    assert!(
        e.message.contains("without `counts`") && e.message.contains("add counts = ") && e.message.contains("leave counts_one out"),
        "{e}"
    );
    let e = error_of(&model("", ""));
    assert_eq!(e.at, "search.distinct[0] (statuses)");
    assert!(e.message.contains("needs `one`") && e.message.contains("label = \"statuses\"") && e.message.contains("add one = "), "{e}");
    for (facet, distinct, at) in [
        ("counts = \"copies\"\ncounts_one = \" \"\n", "one = \"status\"\n", "search.facets[0] (status).counts_one"),
        ("counts = \"\"\ncounts_one = \"copy\"\n", "one = \"status\"\n", "search.facets[0] (status).counts"),
        ("", "one = \"\"\n", "search.distinct[0] (statuses).one"),
    ] {
        let e = error_of(&model(facet, distinct));
        assert!(e.at == at && e.message.contains("is empty"), "{e}");
    }
    // The shipped models declare both.
    let students = Model::students();
    let v = students.search.as_ref().unwrap();
    assert_eq!(v.facets.iter().map(|f| f.counts_one.as_str()).collect::<Vec<_>>(), ["enrollment", "student", "student"]);
    assert_eq!(v.distinct.iter().map(|d| d.one.as_str()).collect::<Vec<_>>(), ["university", "course", "year"]);
    let refinebio = Model::load("refinebio").unwrap();
    assert_eq!(refinebio.search.as_ref().unwrap().distinct[0].one, "unique sample");
}
