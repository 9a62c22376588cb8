// API key administration under /keys (also /api/keys), admin keys only (api/access.cpp):
// create (the key is returned once), list (never the key or its hash), rotate (optionally
// keeping the old key valid for a grace period) and revoke. A change made here is seen by the
// next request and wakes open event streams, which close when their key is no longer valid.
#include "api/context.hpp"
#include "api/request.hpp"
#include "api/routes.hpp"
#include "api/schemas.hpp"
#include "api/services.hpp"
#include "core/api_keys.hpp"
#include "http/router.hpp"
#include "obs/logger.hpp"
#include "storage/store.hpp"
#include "util/json_writer.hpp"

namespace statetrack::api {

namespace {

using boost::asio::awaitable;
using util::json_writer;

// One key as listed: everything but the key and its hash.
void write_key(json_writer& w, const core::api_key& k, core::timestamp now) {
  w.field("id", k.id);
  w.field("prefix", k.prefix);
  w.field("name", k.name);
  w.field("role", core::role_name(k.role));
  w.key("machine_id");
  if (k.machine_id.empty()) {
    w.null();
  } else {
    w.value(k.machine_id);
  }
  w.key("projects").begin_array();
  for (const auto& p : k.projects)
    w.value(p);
  w.end_array();
  w.field_iso("created_at", k.created_at.ms);
  auto opt_time = [&w](std::string_view name, const std::optional<core::timestamp>& t) {
    w.key(name);
    if (t) {
      w.iso(t->ms);
    } else {
      w.null();
    }
  };
  opt_time("last_used_at", k.last_used_at);
  opt_time("expires_at", k.expires_at);
  opt_time("revoked_at", k.revoked_at);
  w.field("status", core::key_state(k, now));
}

std::string key_body(const core::api_key& k, core::timestamp now) {
  std::string out;
  json_writer w(out);
  w.begin_object();
  write_key(w, k, now);
  w.end_object();
  return out;
}

void log_change(context& ctx, std::string_view what, const core::api_key& k) {
  obs::fields f;
  f.add("key_id", std::string_view(ctx.who.key_id))
      .add("request_id", ctx.request_id)
      .add("target_key", std::string_view(k.prefix))
      .add("target_key_db_id", k.id);
  ctx.svc.log.info("AUTH", std::string(what), &f);
}

// The single key named by a path parameter (numeric id or prefix).
core::result<core::api_key> resolve(const std::vector<core::api_key>& all, std::string_view ref) {
  auto found = core::find_keys(all, ref);
  if (found.empty()) {
    return core::make_error(core::errc::not_found, "API key " + std::string(ref) + " not found");
  }
  if (found.size() > 1) {
    return core::make_error(core::errc::bad_request,
                            "Prefix " + std::string(ref) + " matches several keys; use the id");
  }
  return found.front();
}

// POST /keys {name, role, machine_id?, projects?, expires_at? | expires_in_s?}
//   -> 201 key document with `key` (shown once) | 400 | 401 | 403
awaitable<void> post_key(context& ctx) {
  auto body = read_body(ctx, schemas::create_api_key);
  if (!body) co_return ctx.fail(body.error());
  core::key_spec spec;
  spec.name = get_string(*body, "name").value_or("");
  spec.role =
      core::parse_role(get_string(*body, "role").value_or("")).value_or(core::key_role::read);
  spec.machine_id = get_string(*body, "machine_id").value_or("");
  if (const auto* p = body->if_contains("projects"); p != nullptr && p->is_array()) {
    for (const auto& e : p->as_array())
      spec.projects.emplace_back(e.as_string());
  }
  std::vector<std::string> problems;
  auto at = get_string(*body, "expires_at");
  auto in_s = get_number(*body, "expires_in_s");
  if (at && in_s) problems.emplace_back("give expires_at or expires_in_s, not both");
  if (at) spec.expires_at = core::parse_iso(*at);
  if (in_s) spec.expires_at = core::timestamp{ctx.now.ms + static_cast<std::int64_t>(*in_s) * 1000};
  for (auto& p : core::validate_key_spec(spec, ctx.now))
    problems.push_back(std::move(p));
  if (!problems.empty()) co_return ctx.fail(core::validation_error(std::move(problems)));
  std::string plain;
  core::api_key k = core::new_key_record(spec, ctx.now, plain);
  co_await ctx.svc.store.run_write([&k](storage::write_txn& tx) {
    tx.insert_api_key(k);
    return true;
  });
  log_change(ctx, "API key created", k);
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("key", plain);
  write_key(w, k, ctx.now);
  w.end_object();
  ctx.reply(std::move(out));
}

// GET /keys -> 200 key document[] (never a key or its hash)
awaitable<void> list_keys(context& ctx) {
  auto keys = co_await storage::read(ctx.svc.store,
                                     [](storage::read_view& v) { return v.list_api_keys(); });
  std::string out;
  json_writer w(out);
  w.begin_array();
  for (const auto& k : keys) {
    w.begin_object();
    write_key(w, k, ctx.now);
    w.end_object();
  }
  w.end_array();
  ctx.reply(std::move(out));
}

// POST /keys/:id/rotate {grace_s?} -> 201 new key document with `key` and `previous` | 400 |
// 404. The new key has the old one's name, role, machine, scope and expiry.
awaitable<void> post_key_rotate(context& ctx) {
  auto body = read_body(ctx, schemas::rotate_api_key);
  if (!body) co_return ctx.fail(body.error());
  const auto grace_s = static_cast<std::int64_t>(get_number(*body, "grace_s").value_or(0));
  const std::string ref(ctx.param(0));
  const core::timestamp now = ctx.now;
  auto fn = [&](storage::write_txn& tx) -> core::result<core::rotation> {
    auto target = resolve(tx.list_api_keys(), ref);
    if (!target) return target.error();
    return core::rotate_api_key(tx, target->id, grace_s, now);
  };
  auto r = co_await storage::write(ctx.svc.store, std::move(fn));
  if (!r) co_return ctx.fail(r.error());
  ctx.svc.keys.invalidate();
  log_change(ctx, grace_s > 0 ? "API key rotated (old key in grace period)" : "API key rotated",
             r->old);
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("key", r->plain);
  write_key(w, r->fresh, now);
  w.key("previous").begin_object();
  write_key(w, r->old, now);
  w.end_object();
  w.end_object();
  ctx.reply(std::move(out));
}

// DELETE /keys/:id -> 200 key document (revoked; revoking twice is harmless) | 404
awaitable<void> delete_key(context& ctx) {
  const std::string ref(ctx.param(0));
  const core::timestamp now = ctx.now;
  auto fn = [&](storage::write_txn& tx) -> core::result<core::api_key> {
    auto target = resolve(tx.list_api_keys(), ref);
    if (!target) return target.error();
    if (!target->revoked_at && tx.revoke_api_key(target->id, now)) target->revoked_at = now;
    return *target;
  };
  auto r = co_await storage::write(ctx.svc.store, std::move(fn));
  if (!r) co_return ctx.fail(r.error());
  ctx.svc.keys.invalidate();
  log_change(ctx, "API key revoked", *r);
  ctx.reply(key_body(*r, now));
}

}  // namespace

void register_key_routes(http::router& r) {
  using http::method;
  const route_adder add{r, "keys"};
  add(method::post, "/keys", "post_key", post_key, 201,
      {"Create an API key (role, machine binding, project scope, expiry); the key is returned "
       "once",
       "", "CreateApiKeyRequest", "", "CreatedApiKey"});
  add(method::get, "/keys", "list_keys", list_keys, 200,
      {"List API keys (prefix, name, role, scope, created, last used; never the key)", "", "", "",
       "ApiKey", true});
  add(method::post, "/keys/:id/rotate", "post_key_rotate", post_key_rotate, 201,
      {"Replace a key by a new one with the same name, role and scope; the old one is revoked "
       "or kept for grace_s seconds",
       "", "RotateApiKeyRequest", "", "RotatedApiKey"});
  add(method::del, "/keys/:id", "delete_key", delete_key, 200,
      {"Revoke an API key (takes effect on the next request and closes its open streams)", "", "",
       "", "ApiKey"});
}

}  // namespace statetrack::api
