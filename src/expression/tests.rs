use super::*;
use serde_json::{json, Value as Json};
use std::time::{Duration, Instant};

const POD_REVIEW: &str = include_str!("../../tests/fixtures/admissionreviews/0010-Pod-CREATE.json");

fn review() -> Json {
    serde_json::from_str(POD_REVIEW).expect("the recorded review is JSON")
}

/// Evaluates `source` with `object` and `request` bound from the Pod review.
fn eval(source: &str) -> Result<Json, EvalError> {
    let review = review();
    let request = &review["request"];
    let mut activation = Activation::new();
    activation.bind_json("request", request);
    activation.bind_json("object", &request["object"]);
    compile(source).evaluate(&activation)
}

fn eval_bool(source: &str) -> bool {
    let review = review();
    let request = &review["request"];
    let mut activation = Activation::new();
    activation.bind_json("request", request);
    activation.bind_json("object", &request["object"]);
    match compile(source).evaluate_bool(&activation) {
        Ok(value) => value,
        Err(error) => panic!("{source}: {error}"),
    }
}

fn compile(source: &str) -> Expression {
    match Expression::compile(source) {
        Ok(expression) => expression,
        Err(error) => panic!("{source}: {error}"),
    }
}

fn eval_error(source: &str) -> String {
    match eval(source) {
        Ok(value) => panic!("{source}: expected an error, got {value}"),
        Err(EvalError(message)) => message,
    }
}

// --- compiling ---

#[test]
fn syntax_error_reports_its_position() {
    let error = Expression::compile("object.metadata.name == )").unwrap_err();
    assert_eq!((error.line, error.column), (1, 25), "{error}");
    assert!(!error.message.is_empty());
}

#[test]
fn syntax_error_on_later_line() {
    let error = Expression::compile("true &&\n  object.spec.(x)").unwrap_err();
    assert_eq!(error.line, 2, "{error}");
    assert_eq!(error.column, 15, "{error}");
}

#[test]
fn misspelt_member_function_fails_to_compile() {
    let source = r#"request.userInfo.username.startWith("system:")"#;
    let error = Expression::compile(source).unwrap_err();
    assert!(error.message.contains("'startWith'"), "{error}");
    assert_eq!((error.line, error.column), (1, 27), "{error}");
}

#[test]
fn unknown_global_function_fails_to_compile() {
    let error = Expression::compile("true && frobnicate(1)").unwrap_err();
    assert!(error.message.contains("'frobnicate'"), "{error}");
    assert_eq!((error.line, error.column), (1, 9), "{error}");
}

#[test]
fn unknown_function_position_counts_characters() {
    let error = Expression::compile("'ü' == x.nope()").unwrap_err();
    assert_eq!((error.line, error.column), (1, 10), "{error}");
    let error = Expression::compile("'ü' == 1 &&\n  x.nope()").unwrap_err();
    assert_eq!((error.line, error.column), (2, 5), "{error}");
}

#[test]
fn declared_functions_compile() {
    for source in [
        r#"jsonpatch.escapeKey("a/b")"#,
        r#"quantity("1").isLessThan(quantity("2"))"#,
        "math.greatest(1, 2)",
        "[3, 1].sort()",
        "'a,b'.split(',').size()",
        "string(quantity('1k'))",
        "optional.of(1).hasValue()",
        "object.?metadata.?labels.orValue({})",
        "'abc'.matches('^a')",
        "optional.of(1).optMap(x, x + 1)",
        "[{'a': 2}, {'a': 1}].sortBy(e, e.a)",
    ] {
        assert!(Expression::compile(source).is_ok(), "{source}");
    }
}

#[test]
fn compiled_expression_keeps_its_source() {
    assert_eq!(compile("1 + 1").source(), "1 + 1");
}

#[test]
fn expression_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Expression>();
}

// --- roots and members ---

#[test]
fn roots_exclude_comprehension_variables() {
    let expression = compile(
        r#"object.spec.volumes.exists(v, has(v.persistentVolumeClaim) && v.persistentVolumeClaim.claimName == request.name)"#,
    );
    assert_eq!(expression.roots(), ["object", "request"]);
}

#[test]
fn roots_exclude_a_shadowed_root() {
    assert!(compile("[1].all(object, object > 0)").roots().is_empty());
}

#[test]
fn roots_exclude_namespaces_and_type_names() {
    let expression = compile("jsonpatch.escapeKey(variables.key) != '' && type(object) == map");
    assert_eq!(expression.roots(), ["object", "variables"]);
}

#[test]
fn members_are_literal_fields_of_root() {
    let expression = compile(
        r#"variables.a + variables["b"] + (has(variables.c) ? "" : variables.?d.orValue("")) + lookups.claim.metadata.name"#,
    );
    assert_eq!(expression.roots(), ["lookups", "variables"]);
    assert_eq!(expression.members_of("variables"), ["a", "b", "c", "d"]);
    assert_eq!(expression.members_of("lookups"), ["claim"]);
    assert!(expression.members_of("object").is_empty());
    assert!(!expression.reads_whole("variables"));
}

#[test]
fn reading_a_root_whole_is_reported() {
    for source in [
        "size(variables) > 0",
        "variables[object.kind] == 1",
        "variables.exists(k, k == 'a')",
    ] {
        assert!(compile(source).reads_whole("variables"), "{source}");
    }
}

// --- views of the request ---

#[test]
fn view_selects_fields() {
    assert_eq!(
        eval("object.metadata.name").unwrap(),
        json!("pacific-fork-0-0")
    );
    assert_eq!(
        eval("request.userInfo.groups[2]").unwrap(),
        json!("system:authenticated")
    );
}

#[test]
fn view_indexes_with_string_keys_and_int_positions() {
    assert_eq!(
        eval(r#"object.metadata.labels["sei.io/node"]"#).unwrap(),
        json!("pacific-fork-0")
    );
    assert_eq!(
        eval("object.spec.containers[0].args[2]").unwrap(),
        json!("/sei")
    );
    assert_eq!(
        eval("object.spec.containers[0u].name").unwrap(),
        json!("seid")
    );
}

#[test]
fn view_reports_an_index_out_of_bounds() {
    let message = eval_error("object.spec.containers[1]");
    assert!(message.contains("out of bounds"), "{message}");
    let message = eval_error("object.spec.containers[-1]");
    assert!(message.contains("out of bounds"), "{message}");
}

#[test]
fn missing_field_without_has_is_an_error() {
    let message = eval_error("object.spec.nodeName == 'a'");
    assert!(message.contains("nodeName"), "{message}");
}

#[test]
fn has_tests_for_fields() {
    assert!(eval_bool("has(object.metadata.labels)"));
    assert!(!eval_bool("has(object.metadata.annotations)"));
    assert!(!eval_bool("has(object.spec.volumes[0].projected)"));
}

#[test]
fn in_tests_map_keys_and_list_elements() {
    assert!(eval_bool(r#""sei.io/node" in object.metadata.labels"#));
    assert!(!eval_bool(r#""pacific-fork-0" in object.metadata.labels"#));
    assert!(!eval_bool("1 in object.metadata.labels"));
    assert!(eval_bool(r#""--home" in object.spec.containers[0].args"#));
    assert!(!eval_bool(
        r#""--halt-height" in object.spec.containers[0].args"#
    ));
    assert!(eval_bool(
        "9090 in object.spec.containers[0].ports.map(p, p.containerPort)"
    ));
}

#[test]
fn size_counts_entries_and_elements() {
    assert_eq!(eval("size(object.spec.volumes)").unwrap(), json!(2));
    assert_eq!(eval("object.metadata.labels.size()").unwrap(), json!(5));
    assert_eq!(eval("size(object.metadata.name)").unwrap(), json!(16));
}

#[test]
fn macros_iterate_lists_and_map_keys() {
    assert!(eval_bool(
        r#"object.spec.volumes.exists(v, has(v.persistentVolumeClaim) && v.persistentVolumeClaim.claimName == "data-pacific-fork-0")"#
    ));
    assert!(eval_bool(
        "object.spec.containers.all(c, c.image.startsWith('ghcr.io/'))"
    ));
    assert!(eval_bool(
        "object.spec.volumes.exists_one(v, has(v.projected))"
    ));
    assert!(eval_bool(
        "object.metadata.labels.exists(k, k.startsWith('sei.io/'))"
    ));
    assert!(eval_bool(
        "object.metadata.labels.all(k, object.metadata.labels[k] != '')"
    ));
    assert_eq!(
        eval("object.spec.volumes.map(v, v.name)").unwrap(),
        json!(["data", "kube-api-access-p87dl"])
    );
    assert_eq!(
        eval(r#"object.spec.containers.filter(c, c.name == "seid")[0].args"#).unwrap(),
        json!(["start", "--home", "/sei"])
    );
    assert_eq!(
        eval("object.metadata.labels.filter(k, k.startsWith('sei.io/')).sort()").unwrap(),
        json!(["sei.io/component", "sei.io/node"])
    );
}

#[test]
fn nested_comprehensions_read_views() {
    assert!(eval_bool(
        "object.spec.containers.all(c, c.volumeMounts.all(m, object.spec.volumes.exists(v, v.name == m.name)))"
    ));
}

#[test]
fn view_equals_literals_either_side() {
    let labels = r#"{"apps.kubernetes.io/pod-index": "0",
        "controller-revision-hash": "pacific-fork-0-6f7d84bd5b",
        "sei.io/component": "node", "sei.io/node": "pacific-fork-0",
        "statefulset.kubernetes.io/pod-name": "pacific-fork-0-0"}"#;
    assert!(eval_bool(&format!("object.metadata.labels == {labels}")));
    assert!(eval_bool(&format!("{labels} == object.metadata.labels")));
    assert!(!eval_bool(
        r#"object.metadata.labels == {"sei.io/node": "pacific-fork-0"}"#
    ));
    assert!(eval_bool(r#"object.metadata.labels != {"a": "b"}"#));
    assert!(eval_bool(
        r#"object.spec.containers[0].args == ["start", "--home", "/sei"]"#
    ));
    assert!(eval_bool(
        r#"["start", "--home", "/sei"] == object.spec.containers[0].args"#
    ));
    assert!(!eval_bool(
        r#"object.spec.containers[0].args == ["start", "--home"]"#
    ));
    assert!(eval_bool("object.spec.containers[0].command != []"));
}

#[test]
fn view_equals_another_view() {
    assert!(eval_bool("request.object.metadata == object.metadata"));
    assert!(eval_bool(
        "object.spec.volumes[0] == object.spec.volumes[0]"
    ));
    assert!(!eval_bool(
        "object.spec.volumes[0] == object.spec.volumes[1]"
    ));
    assert!(eval_bool(
        "object.spec.volumes[0].persistentVolumeClaim == {'claimName': 'data-pacific-fork-0'}"
    ));
}

#[test]
fn views_pass_to_functions() {
    assert!(eval_bool(
        r#"request.userInfo.username.startsWith("system:serviceaccount:")"#
    ));
    assert!(eval_bool(
        r#"object.spec.containers[0].args.join(" ") == "start --home /sei""#
    ));
    assert!(eval_bool("object.metadata.generateName.endsWith('-')"));
    assert!(eval_bool(
        "object.spec.volumes.map(v, v.name).join(',') == 'data,kube-api-access-p87dl'"
    ));
}

#[test]
fn comprehension_elements_borrow_the_json() {
    let review = review();
    let object = &review["request"]["object"];
    let mut activation = Activation::new();
    activation.bind_json("object", object);
    let expression = compile("object.spec.containers.map(c, c.name)[0]");
    let mut context = Context::with_env(env::shared().clone());
    context.set_variable_resolver(&activation.bindings);
    let value = Value::resolve_val(&expression.ast, &context).unwrap();
    let name = value
        .downcast_ref::<cel::common::types::CelString>()
        .unwrap();
    let in_json = object["spec"]["containers"][0]["name"].as_str().unwrap();
    assert!(std::ptr::eq(name.inner(), in_json), "the name was copied");
}

#[test]
fn bound_list_indexes_before_and_after_iteration() {
    let items = json!([1, 2, {"a": [3]}]);
    let mut activation = Activation::new();
    activation.bind_json("items", &items);
    let expression = compile("items[1] == 2 && items.exists(i, i == 2) && items[2].a == [3]");
    assert_eq!(expression.evaluate_bool(&activation), Ok(true));
    assert_eq!(
        expression.evaluate_bool(&activation),
        Ok(true),
        "with element views built"
    );
}

#[test]
fn empty_views_are_zero_values() {
    let data = json!({"empty": {}, "none": [], "one": [1]});
    let mut activation = Activation::new();
    activation.bind_json("data", &data);
    let expression =
        compile("[data.empty, data.none, data.one].map(x, optional.ofNonZeroValue(x).hasValue())");
    assert_eq!(
        expression.evaluate(&activation).unwrap(),
        json!([false, false, true])
    );
}

#[test]
fn view_lists_concatenate() {
    assert_eq!(
        eval("size(object.spec.containers + object.spec.volumes)").unwrap(),
        json!(3)
    );
    assert_eq!(
        eval("object.spec.containers[0].command + object.spec.containers[0].args").unwrap(),
        json!(["seid", "start", "--home", "/sei"])
    );
    assert_eq!(
        eval("['x'] + object.spec.containers[0].command").unwrap(),
        json!(["x", "seid"])
    );
    let message = eval_error("object.spec.containers[0].args + 'x'");
    assert!(message.contains("_+_"), "{message}");
}

#[test]
fn json_scalars_are_cel_scalars() {
    assert!(eval_bool("object.spec.terminationGracePeriodSeconds == 60"));
    assert!(eval_bool("type(object.spec.priority) == int"));
    assert!(eval_bool("request.dryRun == false"));
    assert!(eval_bool("request.oldObject == null"));
    assert!(eval_bool(
        "type(object.metadata.labels) == map && type(object.spec.volumes) == list"
    ));
}

#[test]
fn numbers_beyond_int_are_doubles() {
    let data = json!({"half": 1.5, "huge": 18446744073709551615u64, "whole": 2.0});
    let mut activation = Activation::new();
    activation.bind_json("data", &data);
    let check = |source: &str| compile(source).evaluate_bool(&activation).unwrap();
    assert!(check("type(data.half) == double && data.half == 1.5"));
    assert!(check("type(data.huge) == double"));
    assert!(check("data.whole == 2"));
}

#[test]
fn scalar_json_binds_as_its_cel_type() {
    let (text, number, nothing) = (json!("abc"), json!(7), Json::Null);
    let mut activation = Activation::new();
    activation.bind_json("text", &text);
    activation.bind_json("number", &number);
    activation.bind_json("nothing", &nothing);
    let expression = compile("text + string(number) + (nothing == null ? '!' : '?')");
    assert_eq!(expression.evaluate(&activation).unwrap(), json!("abc7!"));
}

#[test]
fn binding_a_name_again_replaces_it() {
    let (first, second) = (json!({"a": 1}), json!({"a": 2}));
    let mut activation = Activation::new();
    activation.bind_json("data", &first);
    activation.bind_json("data", &second);
    assert_eq!(compile("data.a").evaluate(&activation).unwrap(), json!(2));
}

#[test]
fn unbound_variable_is_an_error() {
    let message = eval_error("params.replicas > 1");
    assert!(message.contains("params"), "{message}");
}

// --- results ---

#[test]
fn evaluate_copies_views_into_json() {
    let review = review();
    assert_eq!(
        eval("object.metadata.labels").unwrap(),
        review["request"]["object"]["metadata"]["labels"]
    );
    assert_eq!(eval("object").unwrap(), review["request"]["object"]);
}

#[test]
fn evaluate_converts_cel_values() {
    assert_eq!(
        eval(r#"{"a": 1, "b": [true, null, 1.5, "s"]}"#).unwrap(),
        json!({"a": 1, "b": [true, null, 1.5, "s"]})
    );
    assert_eq!(
        eval("18446744073709551615u").unwrap(),
        json!(18446744073709551615u64)
    );
    assert_eq!(eval("b'abc'").unwrap(), json!("YWJj"));
    assert_eq!(
        eval("optional.of(object.metadata.name)").unwrap(),
        json!("pacific-fork-0-0")
    );
    assert_eq!(eval("optional.none()").unwrap(), Json::Null);
    assert_eq!(
        eval("object.?metadata.?annotations.orValue({})").unwrap(),
        json!({})
    );
    assert_eq!(eval("type(1)").unwrap(), json!("int"));
}

#[test]
fn evaluate_builds_json_patch_operations() {
    let patch = eval(
        r#"[{"op": "add", "path": "/metadata/labels/" + jsonpatch.escapeKey("karpenter.sh/do-not-disrupt"), "value": "true"}]"#,
    );
    assert_eq!(
        patch.unwrap(),
        json!([{"op": "add", "path": "/metadata/labels/karpenter.sh~1do-not-disrupt", "value": "true"}])
    );
}

#[test]
fn map_with_int_keys_has_no_json_form() {
    let message = eval_error("{1: 'a'}");
    assert!(message.contains("key of type int"), "{message}");
}

#[test]
fn evaluate_bool_names_the_type_it_got() {
    let review = review();
    let mut activation = Activation::new();
    activation.bind_json("object", &review["request"]["object"]);
    let error = compile("object.metadata.name")
        .evaluate_bool(&activation)
        .unwrap_err();
    assert!(error.0.contains("string"), "{error}");
    let error = compile("object.spec.volumes")
        .evaluate_bool(&activation)
        .unwrap_err();
    assert!(error.0.contains("list"), "{error}");
}

#[test]
fn failed_results_raise_their_error_when_read() {
    let mut variables = BTreeMap::new();
    variables.insert("claim".to_owned(), Ok(json!("data-pacific-fork-0")));
    variables.insert(
        "height".to_owned(),
        Err(EvalError("division by zero".to_owned())),
    );
    let mut activation = Activation::new();
    activation.bind_results("variables", &variables);
    let evaluate = |source: &str| compile(source).evaluate(&activation);
    assert_eq!(
        evaluate("variables.claim").unwrap(),
        json!("data-pacific-fork-0")
    );
    assert_eq!(
        evaluate("variables.claim.startsWith('data-') || variables.height > 0").unwrap(),
        json!(true)
    );
    let error = evaluate("variables.height + 1").unwrap_err();
    assert_eq!(error.0, "variables.height: division by zero");
    let error = evaluate("has(variables.height)").unwrap_err();
    assert_eq!(error.0, "variables.height: division by zero");
    assert_eq!(evaluate("has(variables.other)").unwrap(), json!(false));
    assert_eq!(evaluate("size(variables)").unwrap(), json!(2));
    assert_eq!(evaluate("'claim' in variables").unwrap(), json!(true));
    assert_eq!(
        evaluate("variables.filter(k, k != 'height')").unwrap(),
        json!(["claim"])
    );
}

// --- deadline ---

#[test]
fn passed_deadline_fails_the_evaluation() {
    let review = review();
    let mut activation = Activation::new();
    activation.bind_json("object", &review["request"]["object"]);
    activation.set_deadline(Instant::now());
    let error = compile("object.metadata.name")
        .evaluate(&activation)
        .unwrap_err();
    assert!(
        error.0.starts_with("evaluation exceeded its time limit of"),
        "{error}"
    );
}

#[test]
fn future_deadline_lets_the_evaluation_finish() {
    let review = review();
    let mut activation = Activation::new();
    activation.bind_json("object", &review["request"]["object"]);
    activation.set_deadline(Instant::now() + Duration::from_secs(3600));
    let error = compile("object.metadata.name").evaluate(&activation);
    assert_eq!(error.unwrap(), json!("pacific-fork-0-0"));
}

#[test]
fn variable_lookup_after_the_deadline_finds_nothing() {
    use cel::context::VariableResolver;

    let object = json!({"a": 1});
    let mut activation = Activation::new();
    activation.bind_json("object", &object);
    assert!(activation.bindings.resolve("object").is_some());
    activation.set_deadline(Instant::now());
    assert!(activation.bindings.resolve("object").is_none());
    let error = activation.bindings.check_lookups().unwrap_err();
    assert!(error.0.contains("time limit of"), "{error}");
}

// --- Kubernetes functions ---

#[test]
fn escape_key_escapes_tilde_and_slash() {
    assert_eq!(
        eval(r#"jsonpatch.escapeKey("sei.io/fork~genesis")"#).unwrap(),
        json!("sei.io~1fork~0genesis")
    );
    assert_eq!(
        eval(r#"jsonpatch.escapeKey("plain")"#).unwrap(),
        json!("plain")
    );
    assert_eq!(eval(r#"jsonpatch.escapeKey("~1")"#).unwrap(), json!("~01"));
    assert_eq!(
        eval(
            "object.metadata.labels.map(k, jsonpatch.escapeKey(k)).filter(k, k.startsWith('sei'))"
        )
        .unwrap(),
        json!(["sei.io~1component", "sei.io~1node"])
    );
}

#[test]
fn quantity_functions_compare_and_convert() {
    let requests = "object.spec.containers[0].resources.requests";
    assert!(eval_bool(&format!(
        "quantity({requests}.memory).compareTo(quantity('8192Mi')) == 0"
    )));
    assert!(eval_bool(&format!(
        "quantity({requests}.memory).isGreaterThan(quantity('4Gi'))"
    )));
    assert!(eval_bool(&format!(
        "quantity({requests}.cpu).isLessThan(quantity('2001m'))"
    )));
    assert!(eval_bool(&format!(
        "quantity({requests}.cpu) == quantity('2000m')"
    )));
    assert!(eval_bool("quantity('1k').compareTo(quantity('1Ki')) == -1"));
    assert!(eval_bool("quantity('1Ki').compareTo(quantity('1k')) == 1"));
    assert!(eval_bool(
        "isQuantity('1.5Gi') && !isQuantity('1.5x') && !isQuantity('')"
    ));
    assert_eq!(
        eval("quantity('8Gi').asInteger()").unwrap(),
        json!(8589934592i64)
    );
    assert_eq!(
        eval("quantity('1500m').asApproximateFloat()").unwrap(),
        json!(1.5)
    );
    assert!(eval_bool(
        "quantity('2').isInteger() && !quantity('1500m').isInteger()"
    ));
    assert_eq!(
        eval("[quantity('-1m').sign(), quantity('0').sign(), quantity('1').sign()]").unwrap(),
        json!([-1, 0, 1])
    );
}

#[test]
fn quantity_arithmetic_is_exact() {
    assert!(eval_bool(
        "quantity('0.1').add(quantity('0.2')) == quantity('0.3')"
    ));
    assert!(eval_bool(
        "quantity('1Gi').add(1).compareTo(quantity('1073741825')) == 0"
    ));
    assert!(eval_bool(
        "quantity('1').sub(quantity('1500m')).sign() == -1"
    ));
    assert!(eval_bool("quantity('3').sub(1) == quantity('2')"));
    assert_eq!(
        eval("string(quantity('1Gi').add(quantity('512Mi')))").unwrap(),
        json!("1536Mi")
    );
}

#[test]
fn quantity_result_converts_to_its_canonical_string() {
    assert_eq!(eval("quantity('1.5Gi')").unwrap(), json!("1536Mi"));
    assert_eq!(eval("string(quantity('0.5'))").unwrap(), json!("500m"));
}

#[test]
fn invalid_quantity_is_an_error_naming_it() {
    let message = eval_error("quantity('12x')");
    assert!(
        message.starts_with("quantity: \"12x\" is not a quantity"),
        "{message}"
    );
    let message = eval_error("quantity('1500m').asInteger()");
    assert!(
        message.starts_with("asInteger: 1500m is not a whole number"),
        "{message}"
    );
}
