#!/usr/bin/env bash
# Checks that a node serves what tidemark uses and that its modules are loaded:
#   deploy/opensearch/smoke.sh http://127.0.0.1:9200
# A tidemark-like index (completion, keyword, integer, text with a keyword subfield, an
# object), `_bulk` with external versions (and a stale one that must 409), refresh,
# terms/histogram/cardinality aggregations, a completion suggestion, a painless script
# query and script field (lang-painless), a `stop` analyzer and the `asciifolding`
# filter (analysis-common), a `scaled_float` field
# (mapper-extras), `_reindex` (reindex module), an alias swap. Exits non-zero on the
# first failed check; the index is deleted at the end.
set -euo pipefail
url="${1:-${ELASTICSEARCH_URL:-http://127.0.0.1:9200}}"
ix="smoke-$$-$RANDOM"
pass=0
fail() { printf 'FAIL %s\n%s\n' "$1" "${2:-}" >&2; curl -s -XDELETE "$url/$ix,$ix-copy" >/dev/null || true; exit 1; }
ok() { pass=$((pass + 1)); printf 'ok   %s\n' "$1"; }
req() { # method path [body] -> body on stdout, fails on HTTP >= 400
  local out code
  out=$(curl -s -w '\n%{http_code}' -X "$1" "$url$2" -H 'content-type: application/json' ${3:+--data-binary "$3"})
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  [[ $code -lt 400 ]] || fail "$1 $2 -> HTTP $code" "$out"
  printf '%s' "$out"
}
jq_() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

v=$(req GET / | jq_ 'd["version"].get("distribution","?") + " " + d["version"]["number"]')
[[ $v == opensearch* ]] || fail "GET / is not OpenSearch" "$v"
ok "GET / -> $v"

req PUT "/$ix" '{
  "settings": {"number_of_shards": 1, "number_of_replicas": 0,
    "analysis": {"analyzer": {
      "folded": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase", "asciifolding"]},
      "stopped": {"type": "stop", "stopwords": "_english_"}}}},
  "mappings": {"properties": {
    "first_name": {"type": "text", "analyzer": "folded", "fields": {"raw": {"type": "keyword"}}},
    "last_name": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
    "bio": {"type": "text", "analyzer": "stopped"},
    "age": {"type": "integer"},
    "gpa": {"type": "scaled_float", "scaling_factor": 100},
    "year_in_school": {"type": "keyword"},
    "university": {"properties": {"id": {"type": "integer"}, "name": {"type": "keyword"}}},
    "course_names": {"type": "keyword"},
    "name_complete": {"type": "completion"}}}}' >/dev/null
ok "create index with completion/keyword/integer/text+raw/scaled_float, custom analyzers"

bulk='{"index":{"_id":"1","version":10,"version_type":"external"}}
{"first_name":"Ann","last_name":"Lee","bio":"the best of the class","age":20,"gpa":3.5,"year_in_school":"FR","university":{"id":3,"name":"MIT"},"course_names":["CS101","MATH201"],"name_complete":{"input":["Ann","Lee","Ann Lee"]}}
{"index":{"_id":"2","version":11,"version_type":"external"}}
{"first_name":"Zoë","last_name":"Annaud","bio":"a student","age":21,"gpa":3.9,"year_in_school":"SO","university":{"id":3,"name":"MIT"},"course_names":["CS101"],"name_complete":{"input":["Zoë","Annaud","Zoë Annaud"]}}
{"index":{"_id":"3","version":12,"version_type":"external"}}
{"first_name":"Bob","last_name":"Ray","bio":"a student","age":22,"gpa":2.1,"year_in_school":"SO","university":null,"course_names":[],"name_complete":{"input":["Bob","Ray","Bob Ray"]}}
{"index":{"_id":"1","version":5,"version_type":"external"}}
{"first_name":"Stale","last_name":"Write","age":99,"year_in_school":"SR","name_complete":{"input":["Stale"]}}
{"delete":{"_id":"3","version":13,"version_type":"external"}}
'
r=$(req POST "/$ix/_bulk" "$bulk")
st=$(printf '%s' "$r" | jq_ '",".join(str(list(i.values())[0]["status"]) for i in d["items"])')
[[ $st == "201,201,201,409,200" ]] || fail "_bulk external versions: statuses $st" "$r"
ok "_bulk version_type=external: 201,201,201, stale write 409, delete 200"

n=$(req GET "/$ix/_count" | jq_ 'd["count"]')
ok "_count before refresh: $n (a real engine shows writes after the next refresh)"
req POST "/$ix/_refresh" >/dev/null
n=$(req GET "/$ix/_count" | jq_ 'd["count"]')
[[ $n == 2 ]] || fail "_count after refresh is $n, want 2"
ok "_refresh, then _count = 2"

r=$(req POST "/$ix/_search" '{"size":0,"aggs":{
  "years":{"terms":{"field":"year_in_school"}},
  "unis":{"terms":{"field":"university.name"},"aggs":{"people":{"cardinality":{"field":"last_name.raw"}}}},
  "ages":{"histogram":{"field":"age","interval":2}}}}')
a=$(printf '%s' "$r" | jq_ '";".join(",".join(b["key"]+"="+str(b["doc_count"]) for b in d["aggregations"][k]["buckets"]) for k in ("years","unis"))')
[[ $a == "FR=1,SO=1;MIT=2" ]] || fail "terms aggregations: $a" "$r"
ok "terms + cardinality + histogram aggregations: $a"

r=$(req POST "/$ix/_search" '{"suggest":{"s":{"prefix":"ann","completion":{"field":"name_complete","skip_duplicates":true,"size":5}}}}')
s=$(printf '%s' "$r" | jq_ '",".join(sorted(o["_id"] for o in d["suggest"]["s"][0]["options"]))')
[[ $s == "1,2" ]] || fail "completion suggest for 'ann': $s" "$r"
ok "completion suggest 'ann' -> ids $s"

r=$(req POST "/$ix/_search" '{"query":{"bool":{"filter":{"script":{"script":{"lang":"painless","source":"doc[\u0027age\u0027].value > params.min","params":{"min":20}}}}}},
  "script_fields":{"twice":{"script":{"lang":"painless","source":"doc[\u0027age\u0027].value * 2"}}}}')
s=$(printf '%s' "$r" | jq_ '",".join(h["_id"]+":"+str(h["fields"]["twice"][0]) for h in d["hits"]["hits"])')
[[ $s == "2:42" ]] || fail "painless script query: $s" "$r"
ok "painless script query + script field -> $s"

r=$(req POST "/$ix/_search" '{"query":{"match":{"first_name":"zoe"}}}')
s=$(printf '%s' "$r" | jq_ 'd["hits"]["total"]["value"]')
[[ $s == 1 ]] || fail "asciifolding analyzer: 'zoe' found $s" "$r"
ok "custom analyzer with asciifolding (analysis-common): 'zoe' finds Zoë"

r=$(req POST "/$ix/_analyze" '{"analyzer":"stopped","text":"the best of the class"}')
s=$(printf '%s' "$r" | jq_ '" ".join(t["token"] for t in d["tokens"])')
[[ $s == "best class" ]] || fail "stop analyzer: '$s'" "$r"
ok "stop analyzer (analysis-common): '$s'"

r=$(req POST "/$ix/_search" '{"query":{"range":{"gpa":{"gte":3.6}}}}')
s=$(printf '%s' "$r" | jq_ '",".join(h["_id"] for h in d["hits"]["hits"])')
[[ $s == 2 ]] || fail "scaled_float range: $s" "$r"
ok "scaled_float range (mapper-extras) -> $s"

r=$(req POST "/_reindex?refresh=true" "{\"source\":{\"index\":\"$ix\"},\"dest\":{\"index\":\"$ix-copy\"}}")
s=$(printf '%s' "$r" | jq_ 'd["created"]')
[[ $s == 2 ]] || fail "_reindex created $s" "$r"
ok "_reindex (reindex module): $s documents"

req POST /_aliases "{\"actions\":[{\"add\":{\"index\":\"$ix\",\"alias\":\"$ix-alias\"}}]}" >/dev/null
req POST /_aliases "{\"actions\":[{\"remove\":{\"index\":\"$ix\",\"alias\":\"$ix-alias\"}},{\"add\":{\"index\":\"$ix-copy\",\"alias\":\"$ix-alias\"}}]}" >/dev/null
s=$(req GET "/$ix-alias/_count" | jq_ 'd["count"]')
[[ $s == 2 ]] || fail "alias swap: count $s"
ok "atomic alias swap"

req DELETE "/$ix,$ix-copy" >/dev/null
echo "$pass passed, 0 failed"
