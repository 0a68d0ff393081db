// Asio's SSL layer compiled once (BOOST_ASIO_SEPARATE_COMPILATION), for rediss://.
// If another module starts using asio::ssl, move this include into src/net/asio_impl.cpp
// and delete this file: it must be compiled exactly once in the program.
#include <boost/asio/ssl/impl/src.hpp>
