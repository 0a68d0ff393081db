#include "sluice/auth/scram.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <atomic>
#include <random>
#include <set>
#include <thread>

using namespace sluice::auth;

namespace {

// RFC 7677 section 3. The verifier and ClientKey were computed independently (Python
// hashlib: pbkdf2_hmac / hmac) from password "pencil", this salt and 4096 iterations.
constexpr const char* rfc_client_nonce = "rOprNGfwEbeRWgbNEkqO";
constexpr const char* rfc_server_nonce_part = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr const char* rfc_salt = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr const char* rfc_client_first = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr const char* rfc_server_first =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr const char* rfc_client_final =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr const char* rfc_server_final = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
constexpr const char* rfc_verifier =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
    ":wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
constexpr const char* rfc_client_key = "pg/JI9Z+hkSpLRa5btpe9GVrDHJcSEN0viVTVXaZbos=";

std::vector<std::uint8_t> b64(std::string_view s) {
    return base64_decode(s).value();
}

scram_server rfc_server() {
    scram_server server{std::string(rfc_verifier)};
    server.set_nonce_for_test(rfc_server_nonce_part);
    return server;
}

// Runs a whole exchange; returns whether both sides accept.
bool converse(scram_client& client, scram_server& server) {
    auto first = server.client_first(client.client_first());
    if (!first) return false;
    auto final_msg = client.server_first(*first);
    if (!final_msg) return false;
    auto server_final = server.client_final(*final_msg);
    if (!server_final) return false;
    return client.server_final(*server_final);
}

}  // namespace

TEST(ScramSecret, MakeMatchesRfcVerifier) {
    auto s = make_scram_secret("pencil", b64(rfc_salt), 4096);
    EXPECT_EQ(format_scram_secret(s), rfc_verifier);
}

TEST(ScramSecret, ParseFormatRoundTrip) {
    auto s = parse_scram_secret(rfc_verifier);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->iterations, 4096);
    EXPECT_EQ(s->salt, b64(rfc_salt));
    EXPECT_EQ(s->stored_key.size(), 32u);
    EXPECT_EQ(s->server_key.size(), 32u);
    EXPECT_EQ(format_scram_secret(*s), rfc_verifier);
    EXPECT_TRUE(is_scram_secret(rfc_verifier));

    std::vector<std::uint8_t> salt(16);
    random_bytes(salt.data(), salt.size());
    auto made = make_scram_secret("another password", salt, 10);
    auto reparsed = parse_scram_secret(format_scram_secret(made));
    ASSERT_TRUE(reparsed);
    EXPECT_EQ(reparsed->iterations, 10);
    EXPECT_EQ(reparsed->salt, made.salt);
    EXPECT_EQ(reparsed->stored_key, made.stored_key);
    EXPECT_EQ(reparsed->server_key, made.server_key);
}

TEST(ScramSecret, ParseRejectsMalformed) {
    const std::string keys =
        "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
    for (std::string bad : {
             std::string(""),
             std::string("pencil"),
             std::string("md520c46e3762c864548e296b33c3406aa9"),
             std::string("SCRAM-SHA-256$"),
             "SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==" + keys,
             "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==" + keys,
             "SCRAM-SHA-256$-1:W22ZaJ0SNY7soEsUEjb6gQ==" + keys,
             "SCRAM-SHA-256$99999999999:W22ZaJ0SNY7soEsUEjb6gQ==" + keys,
             "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==" + keys,
             "SCRAM-SHA-256$4096:" + keys,                                          // empty salt
             "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=" + keys,                   // bad base64
             "SCRAM-SHA-256$4096W22ZaJ0SNY7soEsUEjb6gQ==" + keys,                   // no colon
             std::string("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA"),  // short keys
             std::string("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=="),
         }) {
        EXPECT_FALSE(parse_scram_secret(bad)) << bad;
        EXPECT_FALSE(is_scram_secret(bad)) << bad;
    }
}

TEST(ScramBase64, RoundTripAndStrictness) {
    for (std::size_t n = 0; n < 40; ++n) {
        std::vector<std::uint8_t> data(n);
        for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<std::uint8_t>(i * 37 + 5);
        auto text = base64_encode(data.data(), data.size());
        EXPECT_EQ(text.size() % 4, 0u);
        auto back = base64_decode(text);
        ASSERT_TRUE(back) << text;
        EXPECT_EQ(*back, data);
    }
    EXPECT_EQ(base64_encode(reinterpret_cast<const std::uint8_t*>("n,,"), 3), "biws");
    EXPECT_EQ(base64_encode(reinterpret_cast<const std::uint8_t*>("y,,"), 3), "eSws");
    for (const char* bad :
         {"a", "ab", "abc", "ab=c", "a===", "====", "ab c", "ab\nc", "ab!d", "ab==abcd", "=abc"})
        EXPECT_FALSE(base64_decode(bad)) << bad;
    EXPECT_EQ(base64_decode("")->size(), 0u);
}

TEST(ScramServer, Rfc7677Vector) {
    auto server = rfc_server();
    auto first = server.client_first(rfc_client_first);
    ASSERT_TRUE(first);
    EXPECT_EQ(*first, rfc_server_first);
    auto final_msg = server.client_final(rfc_client_final);
    ASSERT_TRUE(final_msg);
    EXPECT_EQ(*final_msg, rfc_server_final);
    EXPECT_EQ(server.client_key(), b64(rfc_client_key));
}

TEST(ScramServer, Rfc7677VectorFromPlaintextNeedsSameSalt) {
    // With a plaintext secret the salt is random, so only the shape is fixed.
    scram_server server(std::string("pencil"), 4096);
    server.set_nonce_for_test(rfc_server_nonce_part);
    auto first = server.client_first(rfc_client_first);
    ASSERT_TRUE(first);
    EXPECT_EQ(first->rfind("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=", 0), 0u);
    EXPECT_NE(first->find(",i=4096"), std::string::npos);
    EXPECT_EQ(server.secret().salt.size(), 16u);
    // The RFC proof was made for another salt.
    EXPECT_FALSE(server.client_final(rfc_client_final));
}

TEST(ScramServer, PlaintextVerifierIsDerivedOnceAndKept) {
    // One verifier per (user, password, iterations), as PostgreSQL keeps one: the same salt
    // and keys on every login (no PBKDF2 per login), another for another password or user.
    scram_server a(std::string("pw-kept"), 4096, "kept_user");
    scram_server b(std::string("pw-kept"), 4096, "kept_user");
    scram_server other_pw(std::string("pw-other"), 4096, "kept_user");
    scram_server other_user(std::string("pw-kept"), 4096, "kept_user2");
    scram_server other_iter(std::string("pw-kept"), 8192, "kept_user");
    EXPECT_EQ(a.secret().salt, b.secret().salt);
    EXPECT_EQ(a.secret().stored_key, b.secret().stored_key);
    EXPECT_EQ(a.secret().server_key, b.secret().server_key);
    EXPECT_NE(a.secret().salt, other_pw.secret().salt);
    EXPECT_NE(a.secret().salt, other_user.secret().salt);
    EXPECT_NE(a.secret().salt, other_iter.secret().salt);
    EXPECT_EQ(other_iter.secret().iterations, 8192);
    // The kept verifier is the password's own: a real exchange with it succeeds, and
    // one with a wrong password fails.
    auto good = scram_client::with_password("pw-kept");
    EXPECT_TRUE(converse(good, b));
    scram_server c(std::string("pw-kept"), 4096, "kept_user");
    auto bad = scram_client::with_password("pw-wrong");
    EXPECT_FALSE(converse(bad, c));
}

TEST(ScramClient, Rfc7677Vector) {
    auto client = scram_client::with_password("pencil");
    client.set_username("user");
    client.set_nonce_for_test(rfc_client_nonce);
    EXPECT_EQ(client.client_first(), rfc_client_first);
    auto final_msg = client.server_first(rfc_server_first);
    ASSERT_TRUE(final_msg);
    EXPECT_EQ(*final_msg, rfc_client_final);
    EXPECT_TRUE(client.server_final(rfc_server_final));
}

TEST(ScramClient, Rfc7677VectorWithPassThroughKeys) {
    auto secret = parse_scram_secret(rfc_verifier).value();
    auto client = scram_client::with_keys(b64(rfc_client_key), secret.server_key);
    client.set_username("user");
    client.set_nonce_for_test(rfc_client_nonce);
    EXPECT_EQ(client.client_first(), rfc_client_first);
    auto final_msg = client.server_first(rfc_server_first);
    ASSERT_TRUE(final_msg);
    EXPECT_EQ(*final_msg, rfc_client_final);
    EXPECT_TRUE(client.server_final(rfc_server_final));
}

TEST(ScramClient, DefaultClientFirstLikeLibpq) {
    auto client = scram_client::with_password("x");
    auto first = client.client_first();
    ASSERT_EQ(first.rfind("n,,n=,r=", 0), 0u);
    EXPECT_EQ(first.size(), 8u + 24u);  // 18 random bytes in base64
}

TEST(ScramClient, UsernameIsEscaped) {
    auto client = scram_client::with_password("x");
    client.set_username("a,b=c");
    client.set_nonce_for_test("abc");
    EXPECT_EQ(client.client_first(), "n,,n=a=2Cb=3Dc,r=abc");
}

TEST(ScramClient, RejectsBadServerSignature) {
    auto client = scram_client::with_password("pencil");
    client.set_username("user");
    client.set_nonce_for_test(rfc_client_nonce);
    client.client_first();
    ASSERT_TRUE(client.server_first(rfc_server_first));
    EXPECT_FALSE(client.server_final("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
}

TEST(ScramClient, RejectsServerError) {
    auto client = scram_client::with_password("pencil");
    client.set_nonce_for_test(rfc_client_nonce);
    client.client_first();
    ASSERT_TRUE(client.server_first(rfc_server_first));
    EXPECT_FALSE(client.server_final("e=invalid-proof"));
}

TEST(ScramClient, RejectsMalformedServerFirst) {
    const std::string n = rfc_client_nonce;
    for (std::string bad : {
             std::string(""),
             std::string("garbage"),
             "r=" + n + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",       // nonce not extended
             "r=XX" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  // not our nonce
             "r=" + n + "abc,s=,i=4096",                            // empty salt
             "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096",     // bad base64
             "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
             "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-5",
             "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001",  // absurd: CPU burn
             "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999",
             "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=",
             "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==",
             "m=ext,r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
             "s=W22ZaJ0SNY7soEsUEjb6gQ==,r=" + n + "abc,i=4096",
             "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,",
         }) {
        auto client = scram_client::with_password("pencil");
        client.set_nonce_for_test(rfc_client_nonce);
        client.client_first();
        EXPECT_FALSE(client.server_first(bad)) << bad;
        EXPECT_FALSE(client.server_final(rfc_server_final));
    }
}

TEST(ScramClient, OutOfOrderCallsFail) {
    auto client = scram_client::with_password("pencil");
    EXPECT_FALSE(client.server_first(rfc_server_first));  // before client_first
    auto client2 = scram_client::with_password("pencil");
    EXPECT_FALSE(client2.server_final(rfc_server_final));
}

TEST(ScramClient, PassThroughRejectsBadKeySizes) {
    auto client = scram_client::with_keys({1, 2, 3}, {4, 5, 6});
    client.set_nonce_for_test(rfc_client_nonce);
    client.client_first();
    EXPECT_FALSE(client.server_first(rfc_server_first));
}

TEST(ScramServer, WrongPasswordFails) {
    auto server = rfc_server();
    auto client = scram_client::with_password("pencil2");
    client.set_username("user");
    client.set_nonce_for_test(rfc_client_nonce);
    auto first = server.client_first(client.client_first());
    ASSERT_TRUE(first);
    auto final_msg = client.server_first(*first);
    ASSERT_TRUE(final_msg);
    EXPECT_FALSE(server.client_final(*final_msg));
    EXPECT_TRUE(server.client_key().empty());
}

TEST(ScramServer, TamperedProofFails) {
    auto server = rfc_server();
    ASSERT_TRUE(server.client_first(rfc_client_first));
    std::string tampered = rfc_client_final;
    tampered[tampered.size() - 3] = tampered[tampered.size() - 3] == 'V' ? 'W' : 'V';
    EXPECT_FALSE(server.client_final(tampered));
}

TEST(ScramServer, UnknownUserLooksNormalButFails) {
    scram_server server(std::nullopt, 4096, "ghost");
    server.set_nonce_for_test(rfc_server_nonce_part);
    auto first = server.client_first(rfc_client_first);
    ASSERT_TRUE(first);
    // Well-formed: a client parses it and produces a client-final.
    auto client = scram_client::with_password("pencil");
    client.set_username("user");
    client.set_nonce_for_test(rfc_client_nonce);
    client.client_first();
    auto final_msg = client.server_first(*first);
    ASSERT_TRUE(final_msg);
    EXPECT_FALSE(server.client_final(*final_msg));

    // The made-up salt is stable per user within the process (like a real salt) and
    // differs between users.
    scram_server again(std::nullopt, 4096, "ghost");
    scram_server other(std::nullopt, 4096, "phantom");
    EXPECT_EQ(again.secret().salt, server.secret().salt);
    EXPECT_NE(other.secret().salt, server.secret().salt);
    EXPECT_EQ(server.secret().salt.size(), 16u);
}

TEST(ScramServer, Md5SecretCannotDoScram) {
    scram_server server(std::string("md520c46e3762c864548e296b33c3406aa9"));
    auto client = scram_client::with_password("pencil");
    EXPECT_FALSE(converse(client, server));
}

TEST(ScramServer, CorruptVerifierIsNotAPlaintextPassword) {
    const std::string corrupt = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA";
    scram_server server{std::string(corrupt)};
    auto client = scram_client::with_password(corrupt);
    EXPECT_FALSE(converse(client, server));
}

TEST(ScramServer, AcceptsYGs2HeaderAndItsBinding) {
    auto server = rfc_server();
    auto first = server.client_first("y,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    ASSERT_TRUE(first);
    EXPECT_EQ(*first, rfc_server_first);
    // c=biws ("n,,") no longer matches the "y,," header sent first: a downgrade.
    EXPECT_FALSE(server.client_final(rfc_client_final));
}

TEST(ScramServer, YHeaderFullExchange) {
    // No client here sends "y,,", so compute its proof by hand from the RFC ClientKey
    // (RFC 5802 section 3) with OpenSSL directly.
    auto server = rfc_server();
    ASSERT_TRUE(server.client_first("y,,n=user,r=rOprNGfwEbeRWgbNEkqO"));
    const std::string without_proof = "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const std::string auth_message =
        std::string("n=user,r=rOprNGfwEbeRWgbNEkqO,") + rfc_server_first + "," + without_proof;
    auto client_key = b64(rfc_client_key);
    unsigned char stored[32], signature[32];
    unsigned int len = 0;
    SHA256(client_key.data(), client_key.size(), stored);
    HMAC(EVP_sha256(), stored, 32, reinterpret_cast<const unsigned char*>(auth_message.data()),
         auth_message.size(), signature, &len);
    std::vector<std::uint8_t> proof(32);
    for (int i = 0; i < 32; ++i) proof[i] = client_key[i] ^ signature[i];
    auto final_msg = server.client_final(without_proof + ",p=" + base64_encode(proof.data(), 32));
    ASSERT_TRUE(final_msg);
    EXPECT_EQ(server.client_key(), client_key);
}

TEST(ScramServer, ServerNonceIsRandomBase64) {
    scram_server a{std::string(rfc_verifier)}, b{std::string(rfc_verifier)};
    auto fa = a.client_first(rfc_client_first);
    auto fb = b.client_first(rfc_client_first);
    ASSERT_TRUE(fa && fb);
    EXPECT_NE(*fa, *fb);
    // r=<client 20 chars><server 24 chars>,
    EXPECT_EQ(fa->find(','), 2u + 20u + 24u);
}

TEST(ScramServer, RejectsMalformedClientFirst) {
    for (std::string bad : {
             std::string(""),
             std::string("n"),
             std::string("n,,"),
             std::string("n,,n=user"),
             std::string("n,,n=user,r="),
             std::string("p=tls-server-end-point,,n=user,r=abc"),  // channel binding
             std::string("n,a=admin,n=user,r=abc"),                // authzid
             std::string("x,,n=user,r=abc"),
             std::string("n,,m=ext,n=user,r=abc"),
             std::string("n,,r=abc,n=user"),
             std::string("n,,n=user,r=ab,c"),
             std::string("n,,n=user,r=abc,"),
             std::string("n,,n=user,r=abc,1=x"),
             std::string("n,,n=user,r=a b"),
             std::string("n,,n=user,r=a\x7f"),
             std::string("n,,n=user,r=a\0b", 15),
             std::string("n,,n=us\0er,r=ab", 15),
         }) {
        auto server = rfc_server();
        EXPECT_FALSE(server.client_first(bad)) << bad;
        // The exchange is over: nothing later succeeds.
        EXPECT_FALSE(server.client_final(rfc_client_final));
    }
}

TEST(ScramServer, AcceptsExtensionsInClientFirst) {
    auto server = rfc_server();
    auto first = server.client_first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO,x=ext");
    ASSERT_TRUE(first);
    // AuthMessage includes the extension, so the RFC proof no longer matches.
    EXPECT_FALSE(server.client_final(rfc_client_final));
}

TEST(ScramServer, RejectsMalformedClientFinal) {
    const std::string nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const std::string proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    for (std::string bad : {
             std::string(""),
             std::string("c=biws"),
             "c=biws,r=" + nonce,
             "c=eSws,r=" + nonce + "," + proof,  // binding mismatch
             "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=" + nonce + "," + proof,
             "c=biws,r=" + nonce + "x," + proof,        // nonce mismatch
             "c=biws,r=rOprNGfwEbeRWgbNEkqO," + proof,  // client nonce only
             "c=biws,r=" + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndV=",
             "c=biws,r=" + nonce + ",p=AAAA",  // short proof
             "c=biws,r=" + nonce + ",p=",
             "c=biws,r=" + nonce + "," + proof + ",x=after",  // proof must be last
             "r=" + nonce + ",c=biws," + proof,
             "c=biws,r=" + nonce + ",," + proof,
             "c=biws,r=" + nonce + "," + proof + std::string("\0", 1),
         }) {
        auto server = rfc_server();
        ASSERT_TRUE(server.client_first(rfc_client_first));
        EXPECT_FALSE(server.client_final(bad)) << bad;
        EXPECT_TRUE(server.client_key().empty());
    }
}

TEST(ScramServer, IgnoresExtensionsBeforeProofButTheyAreSigned) {
    auto server = rfc_server();
    ASSERT_TRUE(server.client_first(rfc_client_first));
    std::string msg = rfc_client_final;
    msg.insert(msg.find(",p="), ",x=ext");
    EXPECT_FALSE(server.client_final(msg));  // parses, but the proof covered no extension
}

TEST(ScramServer, OutOfOrderAndReplayFail) {
    auto server = rfc_server();
    EXPECT_FALSE(server.client_final(rfc_client_final));  // before client_first
    auto server2 = rfc_server();
    ASSERT_TRUE(server2.client_first(rfc_client_first));
    ASSERT_TRUE(server2.client_final(rfc_client_final));
    EXPECT_FALSE(server2.client_final(rfc_client_final));  // no second success
    EXPECT_FALSE(server2.client_first(rfc_client_first));
}

TEST(ScramExchange, PlaintextPasswordOnBothSides) {
    scram_server server(std::string("s3cret pass"), 64);
    auto client = scram_client::with_password("s3cret pass");
    EXPECT_TRUE(converse(client, server));
    EXPECT_EQ(server.client_key().size(), 32u);
}

TEST(ScramExchange, ServerWithVerifier) {
    std::vector<std::uint8_t> salt(16);
    random_bytes(salt.data(), salt.size());
    auto verifier = format_scram_secret(make_scram_secret("hunter2", salt, 100));
    scram_server server(verifier);
    auto client = scram_client::with_password("hunter2");
    EXPECT_TRUE(converse(client, server));

    scram_server server2(verifier);
    auto wrong = scram_client::with_password("hunter3");
    EXPECT_FALSE(converse(wrong, server2));
}

TEST(ScramExchange, PassThroughKeysLogInToTheNextServer) {
    // A client authenticates to Sluice; Sluice then logs in to PostgreSQL (same verifier)
    // with the ClientKey it learnt, without ever knowing the password.
    std::vector<std::uint8_t> salt(16);
    random_bytes(salt.data(), salt.size());
    auto verifier = format_scram_secret(make_scram_secret("hunter2", salt, 100));

    scram_server sluice_side(verifier);
    auto app = scram_client::with_password("hunter2");
    ASSERT_TRUE(converse(app, sluice_side));

    scram_server postgres_side(verifier);
    auto pass_through =
        scram_client::with_keys(sluice_side.client_key(), sluice_side.secret().server_key);
    EXPECT_TRUE(converse(pass_through, postgres_side));

    // Against a server holding a different verifier, pass-through fails on both ends.
    std::vector<std::uint8_t> salt2(16);
    random_bytes(salt2.data(), salt2.size());
    scram_server other(format_scram_secret(make_scram_secret("hunter2", salt2, 100)));
    auto pass_through2 =
        scram_client::with_keys(sluice_side.client_key(), sluice_side.secret().server_key);
    EXPECT_FALSE(converse(pass_through2, other));
}

TEST(ScramExchange, ClientDetectsServerThatDoesNotKnowThePassword) {
    // A server with a different verifier cannot forge v=, so the client refuses it.
    auto server = rfc_server();
    auto client = scram_client::with_password("pencil");
    client.set_username("user");
    client.set_nonce_for_test(rfc_client_nonce);
    client.client_first();
    ASSERT_TRUE(client.server_first(rfc_server_first));
    EXPECT_FALSE(
        client.server_final("v=" + base64_encode(std::vector<std::uint8_t>(32).data(), 32)));
}

TEST(ScramFuzz, RandomAndMutatedInputNeverCrash) {
    std::mt19937 rng(12345);
    const std::string seeds[] = {rfc_client_first, rfc_server_first, rfc_client_final,
                                 rfc_server_final};
    for (int round = 0; round < 3000; ++round) {
        std::string m = seeds[round % 4];
        int edits = 1 + static_cast<int>(rng() % 4);
        for (int e = 0; e < edits && !m.empty(); ++e) {
            std::size_t at = rng() % m.size();
            switch (rng() % 3) {
                case 0:
                    m[at] = static_cast<char>(rng() % 256);
                    break;
                case 1:
                    m.erase(at, 1 + rng() % 3);
                    break;
                default:
                    m.insert(at, 1, static_cast<char>(rng() % 256));
                    break;
            }
        }
        auto server = rfc_server();
        (void)server.client_first(m);
        (void)server.client_final(m);
        auto server2 = rfc_server();
        if (server2.client_first(rfc_client_first)) (void)server2.client_final(m);
        auto client = scram_client::with_password("pencil");
        client.set_nonce_for_test(rfc_client_nonce);
        client.client_first();
        // Keep iterations small so a mutated i= cannot make the test slow.
        std::size_t i_at = m.find("i=");
        bool cheap = i_at == std::string::npos ||
                     m.find_first_not_of("0123456789", i_at + 2) - (i_at + 2) <= 4;
        if (cheap) (void)client.server_first(m);
        (void)client.server_final(m);
        (void)base64_decode(m);
        (void)parse_scram_secret(m);
    }
    SUCCEED();
}

// hmac_sha256 against OpenSSL's HMAC(), for keys shorter than, equal to and longer than
// SHA-256's 64-byte block (a longer key is hashed first), and an empty message.
TEST(ScramHmac, MatchesOpenSslForEveryKeyLength) {
    for (std::size_t key_len : {0, 1, 20, 32, 63, 64, 65, 131}) {
        std::vector<std::uint8_t> key(key_len);
        for (std::size_t i = 0; i < key_len; ++i) key[i] = std::uint8_t(i * 7 + 1);
        for (std::string msg : {std::string(), std::string("Client Key"), std::string(300, 'm')}) {
            unsigned char want[32];
            unsigned int len = 0;
            HMAC(EVP_sha256(), key.data(), int(key.size()),
                 reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), want, &len);
            ASSERT_EQ(len, 32u);
            auto got = hmac_sha256(key.data(), key.size(), msg);
            EXPECT_EQ(std::vector<std::uint8_t>(got.begin(), got.end()),
                      std::vector<std::uint8_t>(want, want + 32))
                << "key " << key_len << " bytes, message " << msg.size() << " bytes";
        }
    }
}

// RFC 4231 test case 6: a 131-byte key, hashed before use.
TEST(ScramHmac, Rfc4231LongKey) {
    std::vector<std::uint8_t> key(131, 0xaa);
    auto got = hmac_sha256(key.data(), key.size(),
                           "Test Using Larger Than Block-Size Key - Hash Key First");
    EXPECT_EQ(base64_encode(got.data(), got.size()),
              base64_encode(std::vector<std::uint8_t>{
                                0x60, 0xe4, 0x31, 0x59, 0x1e, 0xe0, 0xb6, 0x7f, 0x0d, 0x8a, 0x26,
                                0xaa, 0xcb, 0xf5, 0xb7, 0x7f, 0x8e, 0x0b, 0xc6, 0x21, 0x37, 0x28,
                                0xc5, 0x14, 0x05, 0x46, 0x04, 0x0f, 0x0e, 0xe3, 0x7f, 0x54}
                                .data(),
                            32));
}

// random_bytes serves small requests from a per-thread block: no bytes handed out twice,
// across refills, on either side of the size where it goes to RAND_bytes directly.
TEST(ScramRandom, NoRepeatsAcrossRefillsAndSizes) {
    std::set<std::vector<std::uint8_t>> seen;
    for (std::size_t n : {8, 18, 64, 65, 200}) {
        for (int i = 0; i < 200; ++i) {  // 200 x 18 bytes: several refills of the block
            std::vector<std::uint8_t> b(n);
            random_bytes(b.data(), b.size());
            EXPECT_TRUE(seen.insert(b).second) << n << " bytes, call " << i;
        }
    }
    std::uint8_t none = 0x5a;
    random_bytes(&none, 0);  // nothing asked, nothing written
    EXPECT_EQ(none, 0x5a);
}

// Logins on several threads at once: each thread has its own digest context and block.
TEST(ScramExchange, ConcurrentLoginsOnThreads) {
    std::vector<std::uint8_t> salt(16);
    random_bytes(salt.data(), salt.size());
    auto verifier = format_scram_secret(make_scram_secret("hunter2", salt, 50));
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 25; ++i) {
                scram_server server(verifier);
                auto client = scram_client::with_password("hunter2");
                if (converse(client, server)) ok++;
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(ok.load(), 100);
}
