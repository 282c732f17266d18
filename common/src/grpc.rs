//! gRPC health (`grpc.health.v1`) and reflection (v1 and v1alpha), served on
//! every process's port so stock tools can list and call it.

use tonic::service::Routes;
use tonic_health::server::HealthReporter;

/// Routes holding health and reflection; add the process's own services to it.
pub fn base_routes() -> (HealthReporter, Routes) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(turnout_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptor sets are valid");
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(turnout_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("descriptor sets are valid");
    let routes = Routes::new(health).add_service(v1).add_service(v1alpha);
    (reporter, routes)
}
