#include "service/raw_clients.h"

#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "grpcpp/impl/client_unary_call.h"
#include "grpcpp/impl/rpc_method.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/sync_stream.h"

namespace hyla::service {
namespace {

// ---- minimal protobuf wire format ----

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// A length-delimited field (wire type 2).
void PutBytesField(int field, const std::string& value, std::string* out) {
  PutVarint((static_cast<uint64_t>(field) << 3) | 2, out);
  PutVarint(value.size(), out);
  out->append(value);
}

// Reads fields of one message; calls on_varint / on_bytes for wire types 0 and 2, skips 1 and 5.
class WireReader {
 public:
  explicit WireReader(const std::string& data) : data_(data) {}

  bool Next(int* field, int* wire_type) {
    if (pos_ >= data_.size()) return false;
    uint64_t tag = 0;
    if (!Varint(&tag)) return false;
    *field = static_cast<int>(tag >> 3);
    *wire_type = static_cast<int>(tag & 7);
    return true;
  }
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64 && pos_ < data_.size(); shift += 7) {
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  bool Bytes(std::string* out) {
    uint64_t n = 0;
    if (!Varint(&n) || n > data_.size() - pos_) return false;
    *out = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool Skip(int wire_type) {
    uint64_t v = 0;
    std::string s;
    switch (wire_type) {
      case 0:
        return Varint(&v);
      case 1:
        pos_ += 8;
        return pos_ <= data_.size();
      case 2:
        return Bytes(&s);
      case 5:
        pos_ += 4;
        return pos_ <= data_.size();
      default:
        return false;
    }
  }

 private:
  const std::string& data_;
  size_t pos_ = 0;
};

grpc::ByteBuffer ToBuffer(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!b.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace

const char* ServingStatusName(ServingStatus s) {
  switch (s) {
    case ServingStatus::kUnknown:
      return "UNKNOWN";
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
  }
  return "UNKNOWN";
}

absl::StatusOr<ServingStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                          const std::string& service, absl::Duration timeout) {
  std::string request;
  if (!service.empty()) PutBytesField(1, service, &request);  // HealthCheckRequest.service
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  const grpc::internal::RpcMethod method("/grpc.health.v1.Health/Check",
                                         grpc::internal::RpcMethod::NORMAL_RPC);
  grpc::ByteBuffer response;
  grpc::Status st = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel.get(), method, &context, ToBuffer(request), &response);
  if (!st.ok()) return FromGrpc(st);
  const std::string bytes = FromBuffer(response);
  WireReader r(bytes);
  int field = 0;
  int wire = 0;
  uint64_t status = 0;
  while (r.Next(&field, &wire)) {
    if (field == 1 && wire == 0) {  // HealthCheckResponse.status
      if (!r.Varint(&status)) break;
    } else if (!r.Skip(wire)) {
      return absl::DataLossError("malformed HealthCheckResponse");
    }
  }
  if (status > 3) return absl::DataLossError(absl::StrCat("unknown serving status ", status));
  return static_cast<ServingStatus>(status);
}

absl::StatusOr<std::vector<std::string>> ListServices(const std::shared_ptr<grpc::Channel>& channel,
                                                      absl::Duration timeout) {
  std::string request;
  PutBytesField(7, "", &request);  // ServerReflectionRequest.list_services = ""
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  const grpc::internal::RpcMethod method(
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), method, &context));
  stream->Write(ToBuffer(request));
  stream->WritesDone();
  std::vector<std::string> names;
  grpc::ByteBuffer buffer;
  bool malformed = false;
  while (stream->Read(&buffer)) {
    const std::string bytes = FromBuffer(buffer);
    WireReader r(bytes);
    int field = 0;
    int wire = 0;
    while (r.Next(&field, &wire)) {
      if (field == 6 && wire == 2) {  // list_services_response
        std::string list;
        if (!r.Bytes(&list)) {
          malformed = true;
          break;
        }
        WireReader lr(list);
        while (lr.Next(&field, &wire)) {
          if (field == 1 && wire == 2) {  // repeated ServiceResponse service
            std::string service;
            if (!lr.Bytes(&service)) break;
            WireReader sr(service);
            while (sr.Next(&field, &wire)) {
              std::string name;
              if (field == 1 && wire == 2 && sr.Bytes(&name)) {
                names.push_back(name);
              } else if (!sr.Skip(wire)) {
                break;
              }
            }
          } else if (!lr.Skip(wire)) {
            break;
          }
        }
      } else if (!r.Skip(wire)) {
        malformed = true;
        break;
      }
    }
  }
  grpc::Status st = stream->Finish();
  if (!st.ok()) return FromGrpc(st);
  if (malformed) return absl::DataLossError("malformed ServerReflectionResponse");
  return names;
}

}  // namespace hyla::service
